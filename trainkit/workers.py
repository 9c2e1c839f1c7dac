"""Independent fits side by side: Phase 3's seed and fold fits and Phase 4's candidates are
independent of one another, and on a CPU with few cores one fit uses its threads poorly (a small
table's steps are small matrix products), so two fits at once, on half the threads each, finish
sooner than one after the other (``benchmarks/fit_threads.py``: 1.41× the throughput on 2 cores).

:func:`run_jobs` runs a list of jobs (callables that return JSON-able values) and returns their
values in order. Side by side (:func:`side_by_side`: a CPU fit of in-memory data on Linux, with at
least two threads and 2 GiB free, unless ``TRAINKIT_PARALLEL_FITS=0``) the first jobs run two at a
time, each in a forked child process on half the threads; with an odd count the last one runs
after them in this process on every thread. Each job's thread count is thus fixed by its place in
the list, never by timing, so the same config and seed give the same numbers run after run. A
child's output is printed here when it ends; its exception is raised here with its type and
message (and its traceback as a note); a child that dies (killed, out of memory) raises a
:class:`~trainkit.errors.RunError` that names the job. Values travel as JSON (floats round-trip
exactly), never as pickles. Otherwise every job runs here, in order, as before.
"""

from __future__ import annotations

import builtins
import importlib
import io
import json
import os
import selectors
import signal
import sys
import traceback
import warnings
from typing import Any, Callable, Sequence

from trainkit.errors import RunError

__all__ = ["PARALLEL_ENV", "fits_side_by_side", "run_jobs", "side_by_side"]

PARALLEL_ENV = "TRAINKIT_PARALLEL_FITS"  # "0": every fit in this process, one after the other
WORKERS = 2  # fits at once: measured on 2 cores (benchmarks/fit_threads.py); more fight over the cores
MIN_FREE_BYTES = 2 << 30  # each child holds its own model, optimizer and batches


def _plain(o: Any) -> Any:
    """numpy's scalars and arrays as Python's (json's ``default``); anything else is not a value to send."""
    if hasattr(o, "tolist"):
        return o.tolist()
    raise TypeError(f"a job returned {type(o).__name__}, which is not JSON: return numbers, strings, lists, dicts")


def _free_bytes() -> int | None:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def side_by_side(device: str = "cpu", in_memory: bool = True) -> bool:
    """Whether fits of this kind run two at a time: a CPU fit (``device``, the config's
    ``training.device``) of data held in memory (a streamed source's open files must not be shared
    by two processes), on Linux (fork), with at least two threads, CUDA not started in this
    process, no distributed run, 2 GiB free, and ``TRAINKIT_PARALLEL_FITS`` not ``0``."""
    import torch

    if os.environ.get(PARALLEL_ENV, "1").strip() == "0" or not in_memory:
        return False
    if not sys.platform.startswith("linux") or not hasattr(os, "fork"):
        return False
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 or torch.get_num_threads() < 2 or torch.cuda.is_initialized():
        return False
    if device == "auto" and torch.cuda.is_available() or device.startswith("cuda"):
        return False
    free = _free_bytes()
    return free is None or free >= MIN_FREE_BYTES


def fits_side_by_side(cfg: Any, bundle: Any) -> bool:
    """:func:`side_by_side` for fits of ``cfg`` on ``bundle``: its ``training.device``, and whether the
    bundle holds its rows in memory (a tensor, not a streamed source)."""
    return side_by_side(cfg.training.device, getattr(bundle, "_x", None) is not None)


def run_jobs(
    jobs: Sequence[Callable[[], Any]],
    names: Sequence[str],
    parallel: bool,
    allow: Callable[[int, int], bool] | None = None,
) -> list[Any]:
    """The jobs' values, in order; side by side when ``parallel`` (see the module). ``allow(i,
    running)``, asked just before job ``i`` starts (``running``: how many jobs are training then),
    returns False to start no more jobs: the list then ends at the last job started."""
    n = len(jobs)
    pairs = n - n % WORKERS if parallel and n >= WORKERS else 0
    out: list[Any] = [None] * n
    started = _run_children(jobs[:pairs], names[:pairs], allow, out) if pairs else 0
    if started == pairs:
        for i in range(pairs, n):
            if allow is not None and not allow(i, 0):
                break
            # through JSON as a child's value comes: the same values whichever path ran the job
            out[i] = json.loads(json.dumps(jobs[i](), default=_plain))
            started = i + 1
    return out[:started]


def _run_children(
    jobs: Sequence[Callable[[], Any]], names: Sequence[str], allow: Callable[[int, int], bool] | None, out: list[Any]
) -> int:
    """Jobs two at a time in child processes; fills ``out``; how many started (a prefix)."""
    import torch

    threads = max(1, torch.get_num_threads() // WORKERS)
    sel = selectors.DefaultSelector()
    live: dict[int, tuple[int, int, bytearray]] = {}  # fd → (job, pid, bytes read)
    nxt, stop, failure = 0, False, None
    try:
        while live or (nxt < len(jobs) and not stop and failure is None):
            while nxt < len(jobs) and len(live) < WORKERS and not stop and failure is None:
                if allow is not None and not allow(nxt, len(live)):
                    stop = True
                    break
                pid, fd = _fork(jobs[nxt], threads)
                live[fd] = (nxt, pid, bytearray())
                sel.register(fd, selectors.EVENT_READ)
                nxt += 1
            if not live:
                break
            for key, _ in sel.select():
                i, pid, buf = live[key.fd]
                chunk = os.read(key.fd, 1 << 16)
                if chunk:
                    buf += chunk
                    continue
                sel.unregister(key.fd)
                os.close(key.fd)
                del live[key.fd]
                _, status = os.waitpid(pid, 0)
                try:
                    out[i] = _value(bytes(buf), status, names[i])
                except BaseException as exc:
                    failure = failure or exc
    except BaseException:
        _kill(live)
        raise
    finally:
        sel.close()
    if failure is not None:
        raise failure
    return nxt


def _fork(job: Callable[[], Any], threads: int) -> tuple[int, int]:
    r, w = os.pipe()
    with warnings.catch_warnings():  # Python 3.12+ warns on fork in a process with threads; the child uses none
        warnings.simplefilter("ignore", DeprecationWarning)
        pid = os.fork()
    if pid == 0:  # the child: never returns
        os.close(r)
        _child(job, w, threads)
    os.close(w)
    return pid, r


def _child(job: Callable[[], Any], w: int, threads: int) -> None:
    code = 0
    try:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent handles an interrupt and kills its children
        _die_with_parent()
        import torch

        torch.set_num_threads(threads)
        buf = io.StringIO()
        sys.stdout = sys.stderr = buf  # a kernel's streams talk to threads the child does not have
        try:
            res: dict[str, Any] = {"value": job()}
            data = json.dumps(res, default=_plain)
        except BaseException as exc:
            res = {"error": {"type": type(exc).__name__, "module": type(exc).__module__, "message": str(exc)}}
            res["error"]["traceback"] = traceback.format_exc()[-4000:]
            data = json.dumps(res)
        data = data[:-1] + ', "output": ' + json.dumps(buf.getvalue()) + "}"
        view = memoryview(data.encode())
        while view:
            view = view[os.write(w, view) :]
    except BaseException:
        code = 1
    finally:
        os._exit(code)  # no atexit handlers, no kernel teardown: the parent owns those


def _die_with_parent() -> None:
    """Linux: the child is killed when its parent dies (no orphan keeps training and writing)."""
    try:
        import ctypes

        ctypes.CDLL(None).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def _value(data: bytes, status: int, name: str) -> Any:
    """A finished child's value; its printed output is printed here first."""
    try:
        res = json.loads(data) if data else None
    except ValueError:
        res = None
    if res is None:
        how = (
            f"killed by signal {os.WTERMSIG(status)}"
            if os.WIFSIGNALED(status)
            else f"exit status {os.WEXITSTATUS(status)}"
        )
        raise RunError(
            f"{name}: the worker process training it died ({how}; out of memory?) and returned nothing; "
            f"set {PARALLEL_ENV}=0 to train one fit at a time in this process"
        )
    if res.get("output"):
        print(res["output"], end="", flush=True)
    if "error" in res:
        raise _exception(res["error"], name)
    return res["value"]


def _exception(err: dict[str, Any], name: str) -> BaseException:
    """The child's exception as the same type where it is a builtin or trainkit's own (else a
    RuntimeError naming it), its traceback attached as a note."""
    cls: Any = None
    if err["module"] == "builtins":
        cls = getattr(builtins, err["type"], None)
    elif err["module"].startswith("trainkit."):
        try:
            cls = getattr(importlib.import_module(err["module"]), err["type"], None)
        except ImportError:
            cls = None
    exc: BaseException
    try:
        if not (isinstance(cls, type) and issubclass(cls, Exception)):
            raise TypeError
        exc = cls(err["message"])
    except Exception:
        exc = RuntimeError(f"{err['type']}: {err['message']}")
    exc.add_note(f"raised in the worker process training {name}:\n{err['traceback']}")
    return exc


def _kill(live: dict[int, tuple[int, int, bytearray]]) -> None:
    for fd, (_, pid, _) in list(live.items()):
        try:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
        except (ProcessLookupError, ChildProcessError):
            pass
        try:
            os.close(fd)
        except OSError:
            pass
