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
    """Append ``obj`` (its HTML when it has one, and its repr) to the collecting cell's outputs;
    False when nothing collects (the caller displays through IPython)."""
    if not _sinks:
        return False
    data = {"text/plain": repr(obj)}
    html = getattr(obj, "_repr_html_", None)
    if callable(html) and (text := html()) is not None:
        data["text/html"] = text
    return _append(data)


def display_html(text: str) -> bool:
    """:func:`display` of an HTML string, as IPython's ``HTML(text)`` shows."""
    return _append({"text/html": text, "text/plain": "<IPython.core.display.HTML object>"})


def _append(data: dict[str, str]) -> bool:
    if not _sinks:
        return False
    import nbformat

    _sinks[-1].append(nbformat.v4.new_output("display_data", data=data))
    return True
