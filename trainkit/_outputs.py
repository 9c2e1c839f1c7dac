"""Where a phase's displays go when it runs in this process (``TRAINKIT_EXECUTOR=inprocess``):
the executed notebook's outputs, as a kernel would have sent them, instead of IPython's display."""

from __future__ import annotations

import contextlib
from typing import Any, Iterator

_sinks: list[list[Any]] = []  # the outputs list of the cell running now, innermost last


@contextlib.contextmanager
def collect(outputs: list[Any]) -> Iterator[None]:
    """Displays made inside the block are appended to ``outputs`` (nbformat output dicts)."""
    _sinks.append(outputs)
    try:
        yield
    finally:
        _sinks.pop()


def display(obj: Any) -> bool:
    """Append ``obj`` (an HTML string via :func:`display_html`, else any object) to the collecting
    cell's outputs; False when nothing collects (the caller displays through IPython)."""
    if not _sinks:
        return False
    import nbformat

    data = {"text/plain": repr(obj)}
    html = getattr(obj, "_repr_html_", None)
    if callable(html) and (text := html()) is not None:
        data["text/html"] = text
    _sinks[-1].append(nbformat.v4.new_output("display_data", data=data))
    return True


def display_html(text: str) -> bool:
    if not _sinks:
        return False
    import nbformat

    data = {"text/html": text, "text/plain": "<IPython.core.display.HTML object>"}
    _sinks[-1].append(nbformat.v4.new_output("display_data", data=data))
    return True
