"""The standing hostile suite (issue #11): tampering, forged sign-offs, quarantine bypasses, path
escapes, alias bombs, bad data of every kind, a kill between a checkpoint and its sidecar, two runs
on one name, and commands that must survive copy-paste."""

import json
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from trainkit._io import read_json, write_json_atomic
from trainkit.config import config_to_dict
from trainkit.data import load_data
from trainkit.run import TEST_ACCESS_LOG, load_run_data
from trainkit.errors import QuarantineError, RunError
from trainkit.testing import blobs, make_image_folder, run_phase_inprocess, tiny_config
from conftest import trainkit_here  # noqa: E402 (the tests folder is on sys.path)

T = "trainkit.testing:"


def _cli(*args, cwd=None, timeout=120):
    """``trainkit ARGS`` in this process (``conftest.trainkit_here``): a refusal needs no process."""
    return trainkit_here(*args, cwd=cwd)


def _cli_process(*args, cwd=None, timeout=120):
    return subprocess.run(
        [sys.executable, "-m", "trainkit.cli", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=cwd,
    )


def _yaml(path: Path, cfg) -> Path:
    path.write_text(yaml.safe_dump(config_to_dict(cfg) if not isinstance(cfg, dict) else cfg))
    return path


@pytest.fixture(scope="module")
def routed_run(tmp_path_factory):
    """Phases 1 and 2 on tabular data with an unreachable target: Phase 2 routes to Phase 3."""
    root = tmp_path_factory.mktemp("hostile")
    cfg = _yaml(root / "cfg.yaml", tiny_config({"data.source": T + "tabular", "target.value": 0.9999}))
    run = root / "run"
    run_phase_inprocess("01_planning", run, config_path=str(cfg))
    run_phase_inprocess("02_baseline", run, attempt=1)
    assert read_json(run / "02_baseline/attempt-1/decision.json")["next"] == "03_diagnostics"
    return run


def _copy(run: Path, tmp_path: Path) -> Path:
    import shutil

    dest = tmp_path / "run"
    shutil.copytree(run, dest)
    return dest


# ----------------------------------------------------------------------------- 1, 7: gates that really block


@pytest.mark.slow
def test_phase3_refuses_a_baseline_artifact_appended_after_signoff(routed_run, tmp_path):
    run = _copy(routed_run, tmp_path)
    with open(run / "02_baseline/attempt-1/metrics.jsonl", "a") as fh:
        fh.write(json.dumps({"epoch": 99, "val_accuracy": 1.0}) + "\n")
    with pytest.raises(RunError, match="metrics.jsonl"):
        run_phase_inprocess("03_diagnostics", run, attempt=1)
    assert not (run / "03_diagnostics/round-1/findings.json").exists()


@pytest.mark.slow
def test_phase3_refuses_a_failed_mandatory_check_behind_a_cached_passed_state(routed_run, tmp_path):
    run = _copy(routed_run, tmp_path)
    gate_path = run / "02_baseline/attempt-1/gate.json"
    record = read_json(gate_path)
    next(c for c in record["checks"] if c["mandatory"] and c["kind"] == "automatic")["status"] = "fail"
    assert record["state"] == "passed"
    write_json_atomic(gate_path, record)
    with pytest.raises(RunError, match="refuses to start"):
        run_phase_inprocess("03_diagnostics", run, attempt=1)


@pytest.mark.slow
def test_forged_signoff_by_rehashing_is_caught_by_the_chain(routed_run, tmp_path):
    from trainkit._io import sha256_file
    from trainkit.errors import GateError
    from trainkit.gates import verify_gate

    run = _copy(routed_run, tmp_path)
    gate_path = run / "02_baseline/attempt-1/gate.json"
    rel = "02_baseline/attempt-1/baseline_results.md"
    (run / rel).write_text("# all is well\n")
    record = read_json(gate_path)
    record["signoff"]["artifacts"][rel] = record["artifacts"][rel] = sha256_file(run / rel)  # the forger re-hashes
    write_json_atomic(gate_path, record)
    with pytest.raises(GateError, match="edited"):
        verify_gate(gate_path, run)
    manifest = read_json(run / "run.json")  # ... and re-hashes the manifest: the next record still disagrees
    assert record["chain_previous"]["record"] == "01_planning/gate.json"
    manifest["gate_records"]["02_baseline/attempt-1/gate.json"] = sha256_file(gate_path)
    write_json_atomic(run / "run.json", manifest)
    verify_gate(gate_path, run)  # the last record can be forged with the manifest: documented, no key
    p1 = run / "01_planning/gate.json"
    r1 = read_json(p1)
    r1["signoff"]["by"] = "mallory"
    write_json_atomic(p1, r1)
    manifest["gate_records"]["01_planning/gate.json"] = sha256_file(p1)
    write_json_atomic(run / "run.json", manifest)
    with pytest.raises(GateError, match="chained"):
        verify_gate(gate_path, run)


# ----------------------------------------------------------------------------- 3: the quarantine


@pytest.mark.slow
@pytest.mark.slow
def test_a_cut_short_record_is_named_with_what_to_do_not_a_json_traceback(routed_run, tmp_path):
    from trainkit._io import read_jsonl
    from trainkit.errors import CorruptFileError

    run = _copy(routed_run, tmp_path)
    gate = run / "02_baseline" / "attempt-1" / "gate.json"
    gate.write_text(gate.read_text()[:120])  # a disk that filled up, an editor that saved half
    for args in (("status", run), ("signoff", run, "--phase", "2", "--by", "eve", "--check", "x")):
        r = _cli(*args)
        assert r.returncode == 2 and "gate.json: not valid JSON (line" in r.stderr, r.stdout + r.stderr
        assert "restore it from a copy" in r.stderr and "Traceback" not in r.stderr
    (run / "run.json").write_bytes(b"\xff\xfe{")  # not even UTF-8
    with pytest.raises(CorruptFileError, match="run.json: not valid JSON"):
        read_json(run / "run.json")
    log = tmp_path / "log.jsonl"
    log.write_text('{"a": 1}\n{"a": 2}\n{"a": ')  # a process killed mid-append: the torn line is left out
    assert read_jsonl(log) == [{"a": 1}, {"a": 2}]
    log.write_text('{"a": 1}\n{"a": \n{"a": 3}\n')  # a bad line inside is no torn append: named
    with pytest.raises(CorruptFileError, match="log.jsonl: not valid JSON"):
        read_jsonl(log)


def test_test_rows_are_not_reachable_before_phase5(routed_run):
    cfg = tiny_config({"data.source": T + "tabular"})
    bundle = load_run_data(cfg, routed_run, "02_baseline")
    test = torch.as_tensor(bundle.splits["test"])
    assert len(test) and float(bundle._x[test].abs().sum()) == 0.0 and float(bundle.source.x[test].abs().sum()) == 0.0
    assert bool((bundle.source.y[test] == -1).all())
    train = torch.as_tensor(bundle.splits["train"])
    assert float(bundle._x[train].abs().sum()) > 0  # the rest is intact


def test_streamed_test_rows_refuse_to_load():
    cfg = tiny_config({"data.source": T + "torch_dataset"})
    bundle = load_run_data(cfg, None, "03_diagnostics")
    with pytest.raises(QuarantineError):
        bundle.source.dataset[int(bundle.splits["test"][0])]
    assert bundle.source.dataset[int(bundle.splits["train"][0])][0].shape == (6,)


@pytest.mark.slow
def test_the_phase_comes_from_the_run_not_from_the_caller(routed_run, tmp_path):
    from trainkit.run import record_phase

    run = _copy(routed_run, tmp_path)
    record_phase(run, "03_diagnostics", 1, status="running")
    cfg = tiny_config({"data.source": T + "tabular"})
    bundle = load_run_data(cfg, run, "05_finalization")  # a caller claiming to be Phase 5
    with pytest.raises(QuarantineError):
        bundle.arrays("test")
    log = [json.loads(line) for line in (run / TEST_ACCESS_LOG).read_text().splitlines()]
    assert log[-1]["phase"] == "03_diagnostics" and not log[-1]["allowed"]
    with pytest.raises(QuarantineError):  # no run to log in: no test read at all
        load_run_data(cfg, None, "05_finalization").arrays("test")


# ----------------------------------------------------------------------------- 4, 11, 12: names, locks, hints


@pytest.mark.slow
@pytest.mark.parametrize("name", ["../escape", "..", ".", "/tmp/abs-run", "a/b", ""])
def test_run_names_cannot_escape_the_runs_folder(name, tmp_path):
    runs = tmp_path / "runs"
    r = _cli("run", "--name", name, "--runs-dir", runs, cwd=tmp_path)
    assert r.returncode == 2, r.stdout + r.stderr
    assert "--name" in r.stderr
    assert not (tmp_path / "escape").exists() and not Path("/tmp/abs-run").exists()
    assert not list(tmp_path.rglob("run.json"))


@pytest.mark.slow
def test_a_second_run_on_a_locked_name_is_refused(tmp_path):
    from trainkit.pipeline import run_lock

    runs = tmp_path / "runs"
    with run_lock(runs / "busy"):
        r = _cli_process("run", "--name", "busy", "--runs-dir", runs, "--stop-after", "1")  # another process
    assert r.returncode == 2 and "in use" in r.stderr, r.stdout + r.stderr
    assert not (runs / "busy" / "run.json").exists()


@pytest.mark.slow
def test_printed_commands_survive_copy_paste_with_spaces(tmp_path):
    from trainkit.run import init_run, record_phase
    from trainkit.status import describe_run

    run = tmp_path / "my runs" / "a run"
    init_run(run, "a run")
    record_phase(run, "02_baseline", 1, status="running")
    line = describe_run(run).splitlines()[-1]
    args = shlex.split(line.split("next: ", 1)[1].split("  (")[0])
    assert args[:3] == ["trainkit", "run", "--resume"]
    assert args[args.index("--name") + 1] == "a run" and args[args.index("--runs-dir") + 1] == str(tmp_path / "my runs")


# ----------------------------------------------------------------------------- 5: kill between checkpoint and sidecar


@pytest.mark.slow
def test_kill_between_checkpoint_and_sidecar_leaves_a_resumable_pair(tmp_path, monkeypatch):
    import trainkit.checkpoints as ck
    from trainkit.train import fit

    cfg = tiny_config({"training.epochs": 2})
    bundle = load_data(cfg)
    fit(cfg, bundle, tmp_path, progress=False)
    last = tmp_path / "checkpoints" / "last.pt"
    state = ck.load_checkpoint(last)
    real = ck.write_bytes_atomic

    def killed(path, data):  # the kill: a temp file is written, the rename never happens
        (Path(path).parent / f".{Path(path).name}.x1y2.tmp").write_bytes(data[: len(data) // 2])
        raise KeyboardInterrupt("killed")

    monkeypatch.setattr(ck, "write_bytes_atomic", killed)
    with pytest.raises(KeyboardInterrupt):
        ck.save_checkpoint(dict(state, epoch=5), last)
    monkeypatch.setattr(ck, "write_bytes_atomic", real)
    ck.verify_checkpoint(last)  # the old file is still listed by the sidecar
    assert list(last.parent.glob(".*.tmp"))
    r = fit(tiny_config({"training.epochs": 3}), bundle, tmp_path, resume=True, progress=False)
    assert r.status == "completed" and r.resumed_from_epoch == 1
    assert not list(last.parent.glob(".*.tmp"))


# ----------------------------------------------------------------------------- 6, 9, 10: config and approvals files


def _bomb(levels: int = 9) -> str:
    lines = ["a0: &a0 [1, 1, 1, 1, 1, 1, 1, 1, 1]"]
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 9)}]" for i in range(1, levels)]
    return "model:\n  name: mlp\n  kwargs:\n" + "".join(f"    {line}\n" for line in lines)


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["bomb", "binary", "utf16", "directory", "lr_inf", "decay_inf", "betas_nan"])
def test_bad_config_files_exit_2_naming_the_problem(kind, tmp_path):
    p = tmp_path / "cfg.yaml"
    expect = {
        "bomb": "alias",
        "binary": "UTF-8",
        "utf16": "UTF-8",
        "directory": "directory",
        "lr_inf": "optimizer.lr",
        "decay_inf": "optimizer.weight_decay",
        "betas_nan": "optimizer.betas",
    }[kind]
    if kind == "bomb":
        p.write_text(_bomb())
    elif kind == "binary":
        p.write_bytes(bytes(range(256)) * 4)
    elif kind == "utf16":
        p.write_bytes("optimizer:\n  lr: 0.1\n".encode("utf-16"))
    elif kind == "directory":
        p = tmp_path
    else:
        p.write_text(
            {
                "lr_inf": "optimizer:\n  lr: .inf\n",
                "decay_inf": "optimizer:\n  weight_decay: .inf\n",
                "betas_nan": "optimizer:\n  betas: [.nan, .nan]\n",
            }[kind]
        )
    r = _cli("config", "validate", p, timeout=60)
    assert r.returncode == 2 and expect in r.stderr, r.stdout + r.stderr
    r = _cli("run", p, "--name", "x", "--runs-dir", tmp_path / "runs", timeout=60)
    assert r.returncode == 2 and not (tmp_path / "runs" / "x").exists(), r.stderr


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["missing", "malformed", "list", "huge", "bomb", "not_a_name"])
def test_bad_approvals_files_exit_2_before_phase1(kind, tmp_path):
    p = tmp_path / "approvals.yaml"
    if kind == "malformed":
        p.write_text("reproducibility_gate: {config_reviewed: [unclosed\n")
    elif kind == "list":
        p.write_text("- alice\n- bob\n")
    elif kind == "huge":
        p.write_text("signoff: " + "a" * (20 << 20) + "\n")
    elif kind == "bomb":
        p.write_text(_bomb().replace("model:\n  name: mlp\n  kwargs:\n", "x:\n"))
    elif kind == "not_a_name":
        p.write_text("signoff: [1, 2]\n")
    r = _cli("run", "--name", "ap", "--runs-dir", tmp_path / "runs", "--approvals", p, timeout=60)
    assert r.returncode == 2 and str(p) in r.stderr, r.stdout + r.stderr
    assert not (tmp_path / "runs" / "ap").exists()


# ----------------------------------------------------------------------------- 8: bad data


def _npz(path: Path, kind: str) -> Path:
    x, y = blobs(90, 3, 5)
    if kind == "nan":
        x[3, 1] = np.nan
    elif kind == "inf":
        x[4, 0] = np.inf
    elif kind == "label_1000":
        y = y.copy()
        y[7] = 1000
    elif kind == "float_labels":
        y = y + 0.5
    elif kind == "single_class":
        y = np.zeros_like(y)
    elif kind == "string_labels":
        y = np.array(["cat", "dog", "eel"] * 30)
    if kind == "corrupt_zip":
        path.write_bytes(b"PK\x03\x04" + b"\x00" * 64)
    else:
        np.savez(path, x=x, y=y)
    return path


@pytest.mark.slow
@pytest.mark.parametrize(
    "kind,says",
    [
        ("nan", "NaN or Inf"),
        ("inf", "NaN or Inf"),
        ("label_1000", "every class present"),
        ("float_labels", "fractional"),
        ("single_class", "at least 2 classes"),
        ("string_labels", "strings"),
        ("corrupt_zip", "not a readable .npz"),
    ],
)
def test_bad_data_is_a_clear_error_with_exit_2_and_no_run_left(kind, says, tmp_path):
    data = _npz(tmp_path / f"{kind}.npz", kind)
    cfg = _yaml(tmp_path / "cfg.yaml", tiny_config({"data.source": "npz", "data.root": str(data)}))
    for args in (("config", "validate", cfg), ("run", cfg, "--name", "bad", "--runs-dir", tmp_path / "runs")):
        r = _cli(*args)
        assert r.returncode == 2 and says in r.stderr and str(data) in r.stderr, (args, r.stdout + r.stderr)
        assert "Traceback" not in r.stderr
    assert not (tmp_path / "runs" / "bad").exists()


@pytest.mark.slow
def test_an_empty_class_folder_is_named(tmp_path):
    root = make_image_folder(tmp_path / "imgs")
    (root / "class_9").mkdir()
    cfg = _yaml(tmp_path / "cfg.yaml", tiny_config({"data.source": "image_folder", "data.root": str(root)}))
    r = _cli("config", "validate", cfg)
    assert r.returncode == 2 and "class_9" in r.stderr, r.stderr


# ----------------------------------------------------------------------------- 2: resume keeps the user's config


@pytest.mark.slow
def test_resume_after_a_phase1_failure_keeps_the_users_config(tmp_path):
    root = make_image_folder(tmp_path / "imgs", per_class=20, corrupt=1)  # Phase 1 decodes every image: it fails
    cfg = _yaml(
        tmp_path / "mine.yaml",
        tiny_config({"data.source": "image_folder", "data.root": str(root), "target.value": 0.5}),
    )
    runs = tmp_path / "runs"
    r = _cli("run", cfg, "--name", "p", "--runs-dir", runs, "--stop-after", "1", timeout=600)
    assert r.returncode == 1 and "unreadable" in r.stdout + r.stderr, r.stdout + r.stderr
    assert yaml.safe_load((runs / "p" / "config.yaml").read_text())["data"]["source"] == "image_folder"
    for bad in root.glob("class_0/broken_*"):
        bad.unlink()
    r = _cli("run", "--resume", "--name", "p", "--runs-dir", runs, "--stop-after", "1", timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr
    frozen = yaml.safe_load((runs / "p" / "01_planning" / "training_config.yaml").read_text())
    assert frozen["data"]["source"] == "image_folder" and frozen["data"]["root"] == str(root)
    r = _cli("run", "--resume", "--name", "p", "--runs-dir", runs, "--set", "optimizer.lr=1")
    assert r.returncode == 2 and "--resume" in r.stderr  # resume cannot change the config: said, not ignored
