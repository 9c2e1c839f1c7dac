import json

import numpy as np
import pytest
import torch

from trainkit.data import load_data, stratified_split
from trainkit.errors import DataError, QuarantineError
from trainkit.run import TEST_ACCESS_LOG, Phase, load_run_data
from trainkit.testing import make_image_folder, make_npz, noisy, tiny_config

FINAL_PHASE = Phase.FINALIZATION.value


def test_digits_splits_stratified_disjoint_and_reproducible(run_dir):
    b1 = load_run_data(tiny_config(), run_dir, "01_planning", write_splits=True)
    b2 = load_data(tiny_config())
    sets = {k: set(v.tolist()) for k, v in b1.splits.items()}
    assert not (sets["train"] & sets["val"]) and not (sets["train"] & sets["test"]) and not (sets["val"] & sets["test"])
    assert sum(len(s) for s in sets.values()) == 1797
    for k in sets:
        assert np.array_equal(b1.splits[k], b2.splits[k])
    rec = json.loads((run_dir / "01_planning" / "splits.json").read_text())
    assert bool((b1.source.y[b1.splits["test"]] == -1).all())  # test labels are sealed before Phase 5 ...
    counts = {k: np.asarray(v) for k, v in rec["class_counts"].items()}  # ... their counts were recorded first
    overall = sum(counts.values()) / 1797
    for k, c in counts.items():
        assert np.abs(c / c.sum() - overall).max() < 0.02, k
    other = load_data(tiny_config({"data.split_seed": 1}))
    assert not np.array_equal(other.splits["val"], b1.splits["val"])
    assert set(rec["fingerprints"]) == {"train", "val", "test"} and rec["duplicates"]["across_splits"] == 0
    assert rec["indices"]["test"] == b1.splits["test"].tolist()


def test_stratified_split_keeps_every_class_in_every_split():
    y = np.repeat(np.arange(4), [50, 30, 20, 100])
    s = stratified_split(y, 0.2, 0.2, 0)
    for idx in s.values():
        assert set(np.unique(y[idx])) == {0, 1, 2, 3}


def test_quarantine_raises_names_phase_and_logs(run_dir):
    b = load_run_data(tiny_config(), run_dir, "02_baseline")
    with pytest.raises(QuarantineError, match="02_baseline"):
        b.arrays("test", reason="peek")
    with pytest.raises(QuarantineError):
        b.batches("test", 32, shuffle=False)
    from trainkit.run import record_phase

    record_phase(run_dir, FINAL_PHASE, 1, status="running")  # the run itself says Phase 5 is running
    final = load_run_data(tiny_config(), run_dir, FINAL_PHASE)
    x, y = final.arrays("test", reason="final evaluation")
    assert len(x) == len(final.splits["test"])
    log = [json.loads(line) for line in (run_dir / TEST_ACCESS_LOG).read_text().splitlines()]
    assert [(e["phase"], e["allowed"]) for e in log] == [
        ("02_baseline", False),
        ("02_baseline", False),
        (FINAL_PHASE, True),
    ]
    assert log[0]["reason"] == "peek"


def test_data_change_since_phase1_is_refused(run_dir, tmp_path):
    npz = make_npz(tmp_path / "d.npz")
    cfg = tiny_config({"data.source": "npz", "data.root": str(npz)})
    load_run_data(cfg, run_dir, "01_planning", write_splits=True)
    x = np.load(npz)["x"]
    x[0] += 1
    np.savez(npz, x=x, y=np.load(npz)["y"])
    with pytest.raises(DataError, match="changed since Phase 1"):
        load_run_data(cfg, run_dir, "02_baseline")


def test_npz_source_and_errors(tmp_path):
    p = make_npz(tmp_path / "d.npz", n=90, classes=3, dim=5)
    b = load_data(tiny_config({"data.source": "npz", "data.root": str(p)}))
    assert b.input_shape == (5,) and b.num_classes == 3
    xb, yb, n = next(iter(b.batches("train", 16, shuffle=True)))
    assert xb.shape == (16, 5) and n == 16
    np.savez(tmp_path / "bad.npz", features=np.zeros((3, 2)))
    with pytest.raises(DataError, match="missing array"):
        load_data(tiny_config({"data.source": "npz", "data.root": str(tmp_path / "bad.npz")}))
    with pytest.raises(DataError, match="data.root"):
        load_data(tiny_config({"data.source": "npz", "data.root": str(tmp_path / "none.npz")}))
    x = np.random.default_rng(0).normal(size=(60, 4))
    np.savez(tmp_path / "amounts.npz", x=x, y=x[:, 0] * 10.5)  # a quantity under a class metric: the way out named
    with pytest.raises(DataError, match=r"fractional.*a quantity to predict, set a regression metric"):
        load_data(tiny_config({"data.source": "npz", "data.root": str(tmp_path / "amounts.npz")}))
    np.savez(tmp_path / "complex.npz", x=x.astype(np.complex64) * 1j, y=(x[:, 0] > 0).astype(int))
    with pytest.raises(DataError, match="x holds complex numbers"):  # not a silent cast that drops the signal
        load_data(tiny_config({"data.source": "npz", "data.root": str(tmp_path / "complex.npz")}))


def test_image_folder_reports_corrupt_file_by_path(tmp_path):
    root = make_image_folder(tmp_path / "imgs", corrupt=1)
    with pytest.raises(DataError) as e:
        load_data(tiny_config({"data.source": "image_folder", "data.root": str(root)}))
    assert "broken_0.png" in str(e.value) and "1 unreadable" in str(e.value)


def test_image_folder_is_scanned_once_then_verified_by_stat(tmp_path, monkeypatch):
    """Phase 1 writes the manifest (path, size, mtime, sha256); later loads read only what changed."""
    import os

    import trainkit.data.images as D
    from trainkit.run import RunFolder, init_run

    root = make_image_folder(tmp_path / "imgs", classes=3, per_class=20, size=12)
    run = tmp_path / "run"
    init_run(run)
    cfg = tiny_config({"data.source": "image_folder", "data.root": str(root)})
    read: list[str] = []
    inspect = D._inspect_image
    monkeypatch.setattr(D, "_inspect_image", lambda p: read.append(p.name) or inspect(p))
    first = load_run_data(cfg, run, "01_planning", write_splits=True)
    manifest = json.loads(RunFolder(run).data_store().manifest.read_text())
    assert len(read) == 60 and len(manifest["files"]) == 60
    assert {"path", "label", "size", "mtime_ns", "sha256", "w", "h", "mode"} <= set(manifest["files"][0])
    read.clear()
    again = load_run_data(cfg, run, "02_baseline")  # stat only: nothing is opened
    assert read == [] and again.info["fingerprints"] == first.info["fingerprints"]
    victim = root / "class_1" / "img_3.png"
    data = bytearray(victim.read_bytes())
    data[-20] ^= 0xFF  # a changed byte inside the PNG: another image (or a broken one)
    victim.write_bytes(bytes(data))
    os.utime(victim, ns=(victim.stat().st_atime_ns, victim.stat().st_mtime_ns + 10**9))
    with pytest.raises(DataError, match="unreadable|data changed since Phase 1"):
        load_run_data(cfg, run, "02_baseline")
    assert read == ["img_3.png"]  # only the changed file was read again


def test_image_folder_reports_every_corrupt_file_at_once(tmp_path):
    root = make_image_folder(tmp_path / "imgs", per_class=5, corrupt=3)
    with pytest.raises(DataError) as e:
        load_data(tiny_config({"data.source": "image_folder", "data.root": str(root)}))
    assert "3 unreadable" in str(e.value) and all(f"broken_{j}.png" in str(e.value) for j in range(3))


def test_streamed_loader_workers_persist_across_epochs(tmp_path):
    root = make_image_folder(tmp_path / "imgs", classes=2, per_class=10, size=8)
    b = load_data(tiny_config({"data.source": "image_folder", "data.root": str(root)}))
    first = [y.tolist() for _, y, _ in b.batches("train", 4, shuffle=True, seed=1, epoch=0, workers=1)]
    loaders = dict(b._loaders)
    second = [y.tolist() for _, y, _ in b.batches("train", 4, shuffle=True, seed=1, epoch=1, workers=1)]
    assert b._loaders == loaders and len(loaders) == 1  # the same DataLoader (and worker) served both epochs
    ((loader, _),) = loaders.values()
    assert loader.persistent_workers and loader.num_workers == 1
    assert sorted(sum(first, [])) == sorted(sum(second, [])) and first != second  # each epoch its own order


def test_image_folder_streams_through_dataloader(tmp_path):
    root = make_image_folder(tmp_path / "imgs", classes=3, per_class=10, size=12, mode="RGB")
    b = load_data(tiny_config({"data.source": "image_folder", "data.root": str(root), "data.image_size": 8}))
    assert b.source.dataset is not None and b.input_shape == (3, 8, 8)
    batches = list(b.batches("train", 4, shuffle=True, seed=1))
    assert sum(len(x) for x, _, _ in batches) == len(b.splits["train"])
    x, y, _ = batches[0]
    assert x.shape[1:] == (3, 8, 8) and x.dtype == torch.float32
    assert b.source.class_names == ["class_0", "class_1", "class_2"]


def test_import_path_sources(tmp_path):
    b = load_data(tiny_config({"data.source": "trainkit.testing:blobs"}))
    assert b.input_shape == (8,) and b.source.in_memory
    d = load_data(tiny_config({"data.source": "trainkit.testing:torch_dataset"}))
    assert not d.source.in_memory and d.num_classes == 3
    assert len(list(d.batches("train", 8, shuffle=False))) > 0
    with pytest.raises(DataError, match="cannot import"):
        load_data(tiny_config({"data.source": "no_such_pkg.mod:fn"}))
    with pytest.raises(DataError, match="unknown source"):
        load_data(tiny_config({"data.source": "imagenet"}))


@pytest.mark.parametrize(
    "source,expect", [("mnist", "MNIST/raw"), ("fashion_mnist", "FashionMNIST/raw"), ("cifar10", "cifar-10-batches-py")]
)
def test_missing_torchvision_files_give_clear_error(tmp_path, source, expect):
    with pytest.raises(DataError) as e:
        load_data(tiny_config({"data.source": source, "data.root": str(tmp_path)}))
    msg = str(e.value)
    assert expect in msg and "never downloads" in msg and str(tmp_path) in msg


def test_torchvision_source_reads_local_files(tmp_path):
    # write a tiny MNIST in the raw idx format torchvision reads, so the real loading code runs
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    rng = np.random.default_rng(0)

    def idx(path, arr, magic):
        with open(path, "wb") as f:
            f.write(magic.to_bytes(4, "big"))
            for d in arr.shape:
                f.write(int(d).to_bytes(4, "big"))
            f.write(arr.astype(np.uint8).tobytes())

    for prefix, n in (("train", 60), ("t10k", 30)):
        idx(raw / f"{prefix}-images-idx3-ubyte", rng.integers(0, 255, (n, 28, 28)), 2051)
        idx(raw / f"{prefix}-labels-idx1-ubyte", np.arange(n) % 10, 2049)
    b = load_data(tiny_config({"data.source": "mnist", "data.root": str(tmp_path)}))
    assert len(b.source.y) == 90 and b.input_shape == (1, 28, 28)


def test_label_noise_and_subset(run_dir):
    b = load_data(tiny_config({**noisy("digits", 0.15), "data.subset": 200}))
    assert len(b.splits["train"]) == 200
    flipped = b.info["label_noise_flipped"]
    assert len(flipped) == round(0.15 * 200)
    assert all(b.labels[i] != b.source.y[i] for i in flipped)


def test_phase3_sample_of_streamed_data_is_bounded_random_and_maps_back(tmp_path):
    from trainkit.diagnostics.probe_runner import _in_memory_view

    root = make_image_folder(tmp_path / "imgs", classes=3, per_class=40, size=8)
    b = load_data(tiny_config({"data.source": "image_folder", "data.root": str(root)}))
    per_sample = 8 * 8 * 4
    view = _in_memory_view(b, max_bytes=30 * per_sample)
    n = len(view.splits["train"]) + len(view.splits["val"])
    assert n <= 30 and view._x.shape[0] == n and view.sampled["bytes"] <= 30 * per_sample
    assert set(view.global_index[: len(view.splits["train"])]) <= set(b.splits["train"].tolist())
    assert set(view.global_index[len(view.splits["train"]) :]) <= set(b.splits["val"].tolist())
    assert len(set(view.split_labels("train").tolist())) == 3  # a random sample, not the first class's files
    for j in (0, len(view.splits["train"]) - 1):  # row j of the sample is the data's row global_index[j]
        x, y = b.source.dataset[int(view.global_index[j])]
        assert torch.allclose(view._x[j], x) and int(view.split_labels("train")[j]) == y
