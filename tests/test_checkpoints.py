import os
import pickle

import pytest
import torch

from trainkit import _io
from trainkit.checkpoints import load_checkpoint, save_checkpoint, verify_checkpoint
from trainkit.errors import CheckpointError


def state(v=1.0):
    return {"model": {"w": torch.full((3,), v)}, "epoch": 1, "step": 10}


def test_roundtrip_with_sidecar(tmp_path):
    p = tmp_path / "last.pt"
    digest = save_checkpoint(state(), p)
    assert (tmp_path / "last.pt.sha256").read_text().split()[0] == digest
    s = load_checkpoint(p)
    assert torch.equal(s["model"]["w"], torch.ones(3)) and s["format"] == "trainkit-checkpoint/1"


def test_interrupted_write_leaves_previous_intact(tmp_path, monkeypatch):
    p = tmp_path / "last.pt"
    save_checkpoint(state(1.0), p)
    before = p.read_bytes()

    def crash(*a, **k):
        raise KeyboardInterrupt("power cut during rename")

    monkeypatch.setattr(_io.os, "replace", crash)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(state(2.0), p)
    monkeypatch.undo()
    assert p.read_bytes() == before
    assert [f.name for f in tmp_path.iterdir() if f.name.endswith(".tmp")] == []
    assert torch.equal(load_checkpoint(p)["model"]["w"], torch.ones(3))


def test_truncated_and_altered_files_are_refused(tmp_path):
    p = tmp_path / "best.pt"
    save_checkpoint(state(), p)
    data = p.read_bytes()
    p.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated or was altered"):
        load_checkpoint(p)
    p.write_bytes(data[:-1] + bytes([data[-1] ^ 1]))
    with pytest.raises(CheckpointError, match="does not match"):
        verify_checkpoint(p)


class Payload:
    def __reduce__(self):
        return (os.system, (f"touch {MARK}",))


MARK = ""


def test_malicious_pickle_is_refused_and_never_runs(tmp_path):
    global MARK
    MARK = str(tmp_path / "pwned")
    p = tmp_path / "last.pt"
    # a crafted pickle placed as `last`, with no sidecar: refused before unpickling
    p.write_bytes(pickle.dumps({"model": Payload()}))
    with pytest.raises(CheckpointError, match="not written by trainkit"):
        load_checkpoint(p)
    # even with a matching sidecar (an attacker who also wrote the hash), weights_only refuses it
    (tmp_path / "last.pt.sha256").write_text(_io.sha256_file(p) + "  last.pt\n")
    with pytest.raises(CheckpointError, match="refused"):
        load_checkpoint(p)
    torch.save({"model": Payload()}, p)
    (tmp_path / "last.pt.sha256").write_text(_io.sha256_file(p) + "  last.pt\n")
    with pytest.raises(CheckpointError, match="refused"):
        load_checkpoint(p)
    assert not os.path.exists(MARK), "the payload ran"


def test_foreign_weights_only_file_is_not_a_trainkit_checkpoint(tmp_path):
    p = tmp_path / "x.pt"
    torch.save({"w": torch.ones(1)}, p)
    (tmp_path / "x.pt.sha256").write_text(_io.sha256_file(p) + "  x.pt\n")
    with pytest.raises(CheckpointError, match="not a trainkit checkpoint"):
        load_checkpoint(p)
