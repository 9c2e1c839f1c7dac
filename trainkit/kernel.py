"""One kernel for the phases of one ``trainkit run``: started with its first phase, cleared before
each next one, shut down when the run's walk ends (docs/design.md, "Executors").

A kernel's start and the import of torch, trainkit and their libraries cost seconds per phase, the
same seconds each time. Inside :func:`shared_kernel` the papermill executor starts one kernel and
hands it to every phase. Before a phase runs in it, the kernel is made what a new one would be for
the notebook: its namespace, history and execution count reset, its figures and widgets closed, its
environment set to this process's (the budget clock's origin changes between phases). A kernel that
died (a crash, memory) is replaced for the next phase, so a death is still only that phase's
failure. Outside the scope each phase starts its own kernel, as before."""

from __future__ import annotations

import contextlib
import os
from typing import Any, Iterator

__all__ = ["shared_kernel", "kernel_for_phase", "release", "alive", "blocking_client"]

_SCOPE: dict[str, Any] = {"depth": 0, "km": None, "env": None}
_ARGS = ["--IPKernelApp.log_level=ERROR"]  # no kernel transport warnings


def _manager_class() -> type:
    from jupyter_client.manager import AsyncKernelManager  # what papermill's own client expects

    class _Manager(AsyncKernelManager):
        """A kernel manager that remembers the clients it hands out, so each phase's is closed."""

        def client(self, **kw: Any) -> Any:
            c = super().client(**kw)
            self.__dict__.setdefault("_tk_clients", []).append(c)
            return c

    return _Manager


def _start() -> Any:
    from jupyter_core.utils import run_sync

    km = _manager_class()(kernel_name="python3")
    run_sync(km.start_kernel)(extra_arguments=_ARGS)
    return km


def alive(km: Any) -> bool:
    """Whether the kernel of ``km`` (an asynchronous manager) still runs."""
    from jupyter_core.utils import run_sync

    return bool(run_sync(km.is_alive)())


def blocking_client(km: Any) -> Any:
    """A blocking client on the kernel of ``km``, channels started and the kernel ready."""
    from jupyter_client.blocking import BlockingKernelClient

    kc = BlockingKernelClient()
    kc.load_connection_info(km.get_connection_info())
    kc.start_channels()
    kc.wait_for_ready(timeout=60)
    return kc


@contextlib.contextmanager
def shared_kernel() -> Iterator[None]:
    """Phases executed inside share one kernel (nested scopes share the outer one's)."""
    _SCOPE["depth"] += 1
    try:
        yield
    finally:
        _SCOPE["depth"] -= 1
        if _SCOPE["depth"] == 0:
            _shutdown()


def kernel_for_phase() -> Any:
    """The kernel manager a phase runs in (papermill's ``km``), ready for a new notebook; None
    outside :func:`shared_kernel` (papermill then starts and stops a kernel of its own)."""
    if _SCOPE["depth"] == 0:
        return None
    km = _SCOPE["km"]
    if km is None or not alive(km) or not _clear(km):  # none yet, died, or cannot be cleared: a new one
        _shutdown()
        km = _start()
        _SCOPE["km"] = km
    _SCOPE["env"] = dict(os.environ)
    return km


def release(km: Any) -> None:
    """After a phase: close the client its notebook used (the kernel stays for the next phase)."""
    if km is None:
        return
    for c in km.__dict__.pop("_tk_clients", []):
        with contextlib.suppress(Exception):
            c.stop_channels()


def _clear(km: Any) -> bool:
    """Make the running kernel what a new one would be for the next notebook; False when it cannot."""
    was, now = _SCOPE["env"] or {}, dict(os.environ)
    changed = {k: v for k, v in now.items() if was.get(k) != v}
    gone = [k for k in was if k not in now]
    code = (
        "import os as _tk_os, sys as _tk_sys\n"
        f"_tk_os.environ.update({changed!r})\n"
        f"for _tk_k in {gone!r}:\n"
        "    _tk_os.environ.pop(_tk_k, None)\n"
        "if 'matplotlib.pyplot' in _tk_sys.modules:\n"
        "    _tk_sys.modules['matplotlib.pyplot'].close('all')\n"
        "_tk_cbs = get_ipython().events.callbacks\n"  # the last phase's hooks (trainkit's) go with it
        "for _tk_e in _tk_cbs:\n"
        "    _tk_cbs[_tk_e][:] = [\n"
        "        c for c in _tk_cbs[_tk_e] if not getattr(c, '__module__', '').startswith('trainkit')\n"
        "    ]\n"
        "if 'ipywidgets' in _tk_sys.modules:\n"
        "    _tk_sys.modules['ipywidgets'].Widget.close_all()\n"
        "get_ipython().reset(new_session=True)\n"
        "__import__('gc').collect()\n"
    )
    kc = None
    try:
        kc = blocking_client(km)
        reply = kc.execute_interactive(code, silent=True, store_history=False, timeout=60)
        return reply["content"].get("status") == "ok"
    except Exception:
        return False
    finally:
        if kc is not None:
            kc.stop_channels()


def _shutdown() -> None:
    km, _SCOPE["km"] = _SCOPE["km"], None
    if km is None:
        return
    release(km)
    from jupyter_core.utils import run_sync

    with contextlib.suppress(Exception):
        run_sync(km.shutdown_kernel)(now=True)
