"""ipywidgets views: the gate checklist with its Sign-off button, and live training curves.

The only module that imports ipywidgets. Headless runs never rely on these callbacks.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import ipywidgets as W

from trainkit._io import read_json
from trainkit.errors import GateError
from trainkit.gates import GREEN, RED, gate_html, gate_state

__all__ = ["GateWidget", "LiveCurves"]


class GateWidget:
    """A checklist for one gate.json: status and evidence per check, a box per manual item, an
    approver field and a Sign-off button that is enabled only when every mandatory automatic check
    passes and a name is given. Clicking writes the sign-off to gate.json."""

    def __init__(self, gate_path: str | Path, run_dir: str | Path | None = None) -> None:
        self.gate_path = Path(gate_path)
        self.run_dir = Path(run_dir) if run_dir else None
        self.table = W.HTML()
        self.boxes: dict[str, W.Checkbox] = {}
        self.approver = W.Text(placeholder="your name", description="Approver:")
        self.button = W.Button(description="Sign off", button_style="success", icon="check")
        self.message = W.HTML()
        self.button.on_click(self._on_click)
        self.approver.observe(lambda _: self._refresh_button(), names="value")
        record = read_json(self.gate_path)
        for c in record["checks"]:
            if c["kind"] == "manual":
                box = W.Checkbox(
                    value=c["status"] == "pass", description=c["title"], indent=False, layout=W.Layout(width="auto")
                )
                box.add_class(f"trainkit-check-{c['id']}")
                self.boxes[c["id"]] = box
        self.approver.add_class("trainkit-approver")
        self.button.add_class("trainkit-signoff")
        self.view = W.VBox([self.table, *self.boxes.values(), W.HBox([self.approver, self.button]), self.message])
        self._render(record)

    @property
    def record(self) -> dict[str, Any]:
        return read_json(self.gate_path)

    def _render(self, record: dict[str, Any]) -> None:
        self.table.value = gate_html(record)
        self._refresh_button(record)

    def _refresh_button(self, record: dict[str, Any] | None = None) -> None:
        record = record or self.record
        state = gate_state(record)
        self.button.disabled = state in ("blocked", "passed") or not self.approver.value.strip()
        self.button.tooltip = (
            "mandatory automatic checks fail"
            if state == "blocked"
            else "already signed off"
            if state == "passed"
            else "enter your name"
            if not self.approver.value.strip()
            else "sign this gate"
        )

    def _on_click(self, _: Any = None) -> None:
        ticked = [cid for cid, box in self.boxes.items() if box.value]
        from trainkit.reports import publish_signoff

        notes: list[str] = []
        try:
            record = publish_signoff(self.gate_path, self.approver.value, ticked, self.run_dir, warn=notes.append)
        except GateError as exc:
            self.message.value = f"<span style='color:{RED}'>Not signed: {exc}</span>"
            return
        self.message.value = f"<span style='color:{GREEN}'>Signed off by {record['signoff']['by']}.</span>" + "".join(
            f" <small>({m})</small>" for m in notes
        )
        self._render(record)

    def _ipython_display_(self) -> None:
        from IPython.display import display

        display(self.view)


class LiveCurves:
    """Loss and accuracy curves redrawn in place once per epoch (one output, updated)."""

    def __init__(self) -> None:
        from IPython.display import display

        self.records: list[dict[str, Any]] = []
        self.handle = display(W.HTML("<i>waiting for the first epoch…</i>"), display_id=True)

    def __call__(self, record: dict[str, Any]) -> None:
        from trainkit.plots import curves_figure, figure_png_html

        self.records.append(record)
        fig = curves_figure(self.records)
        self.handle.update(W.HTML(figure_png_html(fig)))
