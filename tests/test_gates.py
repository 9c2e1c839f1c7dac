import json

import pytest

from trainkit.errors import GateBlocked, GateError
from trainkit.gates import AUTO_SIGNER, evaluate_gate, gate_html, sign_off, verify_gate

ALL_PASS = {
    c: ("pass", "ok")
    for c in (
        "seeds_fixed",
        "deterministic_mode",
        "environment_documented",
        "config_valid",
        "splits_fingerprinted",
        "test_quarantined",
        "determinism_verified",
    )
}


def setup_phase(run_dir):
    d = run_dir / "01_planning"
    d.mkdir()
    (d / "training_config.yaml").write_text("a: 1\n")
    return d


def test_blocked_gate_is_recorded_before_raising(run_dir):
    d = setup_phase(run_dir)
    results = dict(ALL_PASS, seeds_fixed=("fail", "seed not applied"))
    with pytest.raises(GateBlocked) as e:
        evaluate_gate("reproducibility_gate", run_dir, d, results, ["01_planning/training_config.yaml"])
    assert "seeds_fixed" in str(e.value)
    record = json.loads((d / "gate.json").read_text())
    assert record["state"] == "blocked"
    assert next(c for c in record["checks"] if c["id"] == "seeds_fixed")["evidence"] == "seed not applied"
    with pytest.raises(GateError, match="blocked"):
        sign_off(d / "gate.json", "alice")
    with pytest.raises(GateError, match="blocked"):
        verify_gate(d / "gate.json")


def test_missing_result_fails_and_waiver_passes(run_dir):
    d = setup_phase(run_dir)
    results = {k: v for k, v in ALL_PASS.items() if k != "deterministic_mode"}
    with pytest.raises(GateBlocked, match="not evaluated"):
        evaluate_gate("reproducibility_gate", run_dir, d, results)
    results["deterministic_mode"] = ("fail", "off")
    rec = evaluate_gate(
        "reproducibility_gate", run_dir, d, results, waivers={"deterministic_mode": "cuDNN speed needed"}
    )
    c = next(c for c in rec["checks"] if c["id"] == "deterministic_mode")
    assert c["status"] == "waived" and "cuDNN speed needed" in c["evidence"]


def test_signoff_records_hashes_and_tamper_is_detected(run_dir):
    d = setup_phase(run_dir)
    rec = evaluate_gate("reproducibility_gate", run_dir, d, ALL_PASS, ["01_planning/training_config.yaml"])
    assert rec["state"] == "awaiting_signoff"
    with pytest.raises(GateError, match="awaiting_signoff"):
        verify_gate(d / "gate.json")
    with pytest.raises(GateError, match="not a manual check"):
        sign_off(d / "gate.json", "alice", ["seeds_fixed"])
    with pytest.raises(GateError, match="name"):
        sign_off(d / "gate.json", "  ")
    rec = sign_off(d / "gate.json", "alice", ["config_reviewed"])
    assert rec["state"] == "passed" and rec["signoff"]["by"] == "alice"
    assert rec["signoff"]["artifacts"]["01_planning/training_config.yaml"]
    assert verify_gate(d / "gate.json")["state"] == "passed"
    (d / "training_config.yaml").write_text("a: 2\n")
    with pytest.raises(GateError, match="changed after sign-off"):
        verify_gate(d / "gate.json")


def test_headless_approvals_and_auto_signoff(run_dir):
    d = setup_phase(run_dir)
    rec = evaluate_gate("reproducibility_gate", run_dir, d, ALL_PASS, approvals={"config_reviewed": "bob"})
    assert rec["state"] == "passed" and rec["signoff"]["by"] == "bob"
    assert next(c for c in rec["checks"] if c["id"] == "config_reviewed")["status"] == "pass"
    rec = evaluate_gate("reproducibility_gate", run_dir, d, ALL_PASS, auto_signoff=True)
    assert rec["signoff"]["by"] == AUTO_SIGNER and rec["signoff"]["automatic"]


def test_gate_html_is_a_plain_table(run_dir):
    d = setup_phase(run_dir)
    rec = evaluate_gate("reproducibility_gate", run_dir, d, dict(ALL_PASS, config_valid=("pass", "<b>x</b>")))
    html = gate_html(rec)
    assert "<table" in html and "seeds_fixed" in html and "&lt;b&gt;x&lt;/b&gt;" in html and "<script" not in html


def test_widget_tick_and_click_signs_off(run_dir):
    from trainkit.widgets import GateWidget

    d = setup_phase(run_dir)
    evaluate_gate("reproducibility_gate", run_dir, d, ALL_PASS, ["01_planning/training_config.yaml"])
    w = GateWidget(d / "gate.json", run_dir)
    assert w.button.disabled  # no name yet
    w.boxes["config_reviewed"].value = True
    w.approver.value = "carol"
    assert not w.button.disabled
    w.button.click()
    rec = json.loads((d / "gate.json").read_text())
    assert rec["state"] == "passed" and rec["signoff"]["by"] == "carol"
    assert next(c for c in rec["checks"] if c["id"] == "config_reviewed")["status"] == "pass"
    assert "Signed off by carol" in w.message.value
    assert w.button.disabled  # a signed gate is not signed twice


def test_widget_button_disabled_when_blocked(run_dir):
    from trainkit.widgets import GateWidget

    d = setup_phase(run_dir)
    with pytest.raises(GateBlocked):
        evaluate_gate("reproducibility_gate", run_dir, d, dict(ALL_PASS, config_valid=("fail", "bad")))
    w = GateWidget(d / "gate.json", run_dir)
    w.approver.value = "dan"
    assert w.button.disabled


def test_the_printed_way_out_of_a_blocked_gate_ticks_its_manual_checks_and_waives_its_failures(tmp_path):
    """``finish_command`` (what ``trainkit status`` and a blocked Phase 5 print): signing with what
    it names passes a blocked gate, once NAME and REASON are filled in; without the waiver it is refused."""
    import shlex

    from trainkit.gates import GATES
    from trainkit.run import finish_command

    run_dir = tmp_path / "my run"
    d = run_dir / "05_finalization"
    d.mkdir(parents=True)
    auto = {c.id: ("pass", "ok") for c in GATES["production_ready"].checks if c.kind == "automatic"}
    with pytest.raises(GateBlocked):
        evaluate_gate("production_ready", run_dir, d, dict(auto, test_meets_target=("fail", "0.91 < 0.95")))
    record = json.loads((d / "gate.json").read_text())
    cmd = finish_command(run_dir, 5, record["checks"])
    assert cmd == (
        f"trainkit signoff '{run_dir}' --phase 5 --by NAME"
        " --check stakeholder_approval --waive test_meets_target=REASON"
    )
    from trainkit.run import resume_command, way_out

    said = way_out(run_dir, 5, record["checks"], blocked=True, q="`")  # what Phase 5's decision says
    assert said.startswith("fix what the failing checks say") and f"`{cmd}` then `{resume_command(run_dir)}`" in said
    words = shlex.split(cmd)
    checks = [words[i + 1] for i, w in enumerate(words) if w == "--check"]
    waived = [words[i + 1].split("=")[0] for i, w in enumerate(words) if w == "--waive"]
    with pytest.raises(GateError, match="blocked"):
        sign_off(d / "gate.json", "alice", checks)
    signed = sign_off(d / "gate.json", "alice", checks, waivers={k: "0.91 is enough for the pilot" for k in waived})
    assert signed["state"] == "passed" and signed["waivers"][0]["check"] == "test_meets_target"
    assert finish_command(run_dir, 5, signed["checks"]).endswith("--by NAME")  # nothing left to tick or waive
