"""Independent fits side by side (trainkit/workers.py; docs/design.md, "Performance principles"):
two at a time in forked children on half the threads, an odd last one here on every thread, values
in order and the same as the job run here on the child's threads; a child's exception, death and
output come back; the budget's ``allow`` stops the list."""

from __future__ import annotations

import os
import signal

import pytest
import torch

from trainkit.data import load_data
from trainkit.errors import DataError, RunError
from trainkit.testing import tiny_config
from trainkit.train import fit
from trainkit import workers
from trainkit.workers import PARALLEL_ENV, fits_side_by_side, run_jobs, side_by_side

pytestmark = pytest.mark.slow  # each test starts processes


def _where() -> dict[str, int]:
    return {"pid": os.getpid(), "threads": torch.get_num_threads()}


def test_pairs_run_in_children_on_half_the_threads_and_an_odd_last_one_here():
    threads = torch.get_num_threads()
    out = run_jobs([_where] * 3, ["a", "b", "c"], parallel=True)
    assert [o["pid"] != os.getpid() for o in out] == [True, True, False]
    assert out[0]["pid"] != out[1]["pid"]
    assert [o["threads"] for o in out] == [max(1, threads // 2)] * 2 + [threads]
    assert torch.get_num_threads() == threads  # this process's threads are untouched
    assert [o["pid"] for o in run_jobs([_where] * 2, ["a", "b"], parallel=False)] == [os.getpid()] * 2


def test_a_fit_side_by_side_gives_the_numbers_it_gives_here_on_the_same_threads():
    cfg = tiny_config({"training.epochs": 3})
    data = load_data(cfg)

    def job(seed):
        def run():
            r = fit(_seeded(cfg, seed), data, None, progress=False)
            return {"history": r.history, "best": r.best, "threads": r.threads}

        return run

    side = run_jobs([job(1), job(2)], ["seed 1", "seed 2"], parallel=True)
    threads = torch.get_num_threads()
    torch.set_num_threads(side[0]["threads"])
    try:
        here = [job(1)(), job(2)()]
    finally:
        torch.set_num_threads(threads)
    keys = ("train_loss", "val_loss", "val_accuracy")
    for a, b in zip(side, here):
        assert [[h[k] for k in keys] for h in a["history"]] == [[h[k] for k in keys] for h in b["history"]]
        assert a["best"]["val_accuracy"] == b["best"]["val_accuracy"]
    assert side[0]["history"] != side[1]["history"]  # two seeds, two runs


def _seeded(cfg, seed):
    from trainkit.config import with_overrides

    return with_overrides(cfg, {"training.seed": seed})


def test_a_childs_exception_comes_back_with_its_type_message_and_traceback():
    def bad():
        raise DataError("column 'price' is empty")

    with pytest.raises(DataError, match="column 'price' is empty") as info:
        run_jobs([_where, bad], ["fine", "the bad one"], parallel=True)
    assert "the bad one" in "".join(info.value.__notes__) and "raise DataError" in "".join(info.value.__notes__)

    def odd():
        raise KeyError("x")

    with pytest.raises(KeyError):
        run_jobs([odd, _where], ["odd", "fine"], parallel=True)


def test_a_child_that_dies_is_named_and_its_output_is_printed_here(capsys):
    def dies():
        os.kill(os.getpid(), signal.SIGKILL)

    def talks():
        print("fold 2: 14 epochs")
        return 7

    with pytest.raises(RunError, match=r"label probe fold 1: the worker process .* died \(killed by signal 9") as info:
        run_jobs([dies, talks], ["label probe fold 1", "label probe fold 2"], parallel=True)
    assert PARALLEL_ENV in str(info.value)
    assert capsys.readouterr().out == "fold 2: 14 epochs\n"


def test_allow_stops_the_list_before_a_job_starts(tmp_path):
    def touch(i):
        def run():
            (tmp_path / f"ran-{i}").write_text("")
            return i

        return run

    asked = []

    def allow(i, running):
        asked.append((i, running))
        return i < 1

    assert run_jobs([touch(i) for i in range(4)], list("abcd"), parallel=True, allow=allow) == [0]
    assert asked == [(0, 0), (1, 1)]  # job 1 would have started beside job 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ran-0"]
    assert run_jobs([touch(i) for i in range(3)], list("abc"), parallel=False, allow=lambda i, r: i != 2) == [0, 1]


def test_side_by_side_only_for_in_memory_cpu_fits_and_not_when_turned_off(monkeypatch):
    monkeypatch.delenv(PARALLEL_ENV, raising=False)
    free = workers._free_bytes()
    can = (
        torch.get_num_threads() >= 2
        and not torch.cuda.is_available()
        and (free is None or free >= workers.MIN_FREE_BYTES)
    )
    assert side_by_side("cpu") is (can and os.name == "posix")
    assert side_by_side("cpu", in_memory=False) is False
    assert side_by_side("cuda") is False
    cfg = tiny_config({"training.device": "cpu"})
    assert fits_side_by_side(cfg, load_data(cfg)) is side_by_side("cpu")  # the digits are held in memory
    assert fits_side_by_side(cfg, type("Streamed", (), {"_x": None})()) is False
    monkeypatch.setenv(PARALLEL_ENV, "0")
    assert side_by_side("cpu") is False


def test_values_travel_as_json_the_same_on_either_path():
    import numpy as np

    def numbers():
        return {"acc": np.float32(0.5), "probs": np.array([[0.25, 0.75]]), "nan": float("nan")}

    for parallel in (True, False):
        a, b = run_jobs([numbers, numbers], ["a", "b"], parallel=parallel)
        assert a == b and a["acc"] == 0.5 and a["probs"] == [[0.25, 0.75]] and a["nan"] != a["nan"]
        with pytest.raises(TypeError, match="object, which is not JSON"):
            run_jobs([object, numbers], ["an object", "b"], parallel=parallel)
