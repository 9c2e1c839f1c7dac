"""Real browsers: JupyterLab in headless Chromium runs notebook 01 and signs its gate in the widget."""

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = "/usr/bin/chromium"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]

pytestmark = pytest.mark.browser


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def lab(tmp_path):
    assert Path(CHROMIUM).exists(), "Debian's chromium is required (scripts/install.sh installs it)"
    shutil.copy(ROOT / "notebooks" / "01_planning.ipynb", tmp_path / "01_planning.ipynb")
    port, token = _free_port(), "trainkit-test-token"
    proc = subprocess.Popen(
        [sys.executable, "-m", "jupyterlab", "--no-browser", "--ip=127.0.0.1", f"--port={port}", "--allow-root",
         f"--ServerApp.token={token}", "--LabApp.expose_app_in_browser=True", f"--ServerApp.root_dir={tmp_path}",
         "--ServerApp.disable_check_xsrf=True"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=dict(os.environ, TRAINKIT_PROGRESS="off"))
    url = f"http://127.0.0.1:{port}"
    for _ in range(120):
        try:
            urllib.request.urlopen(f"{url}/api/status?token={token}", timeout=1)
            break
        except OSError:
            time.sleep(0.5)
    else:
        proc.kill()
        pytest.fail("JupyterLab did not start on 127.0.0.1")
    yield url, token, tmp_path
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()


def test_jupyterlab_runs_notebook_01_and_signs_the_gate_in_the_widget(lab):
    from playwright.sync_api import sync_playwright

    url, token, root = lab
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.goto(f"{url}/lab/tree/01_planning.ipynb?token={token}", timeout=60_000)
        page.wait_for_function("window.jupyterapp && window.jupyterapp.shell.currentWidget && "
                               "window.jupyterapp.shell.currentWidget.sessionContext", timeout=90_000)
        # the kernel must be really connected and idle before cells run
        page.wait_for_function("""() => { const s = window.jupyterapp.shell.currentWidget.sessionContext;
            const k = s.session && s.session.kernel;
            return k && k.connectionStatus === 'connected' && k.status === 'idle'; }""", timeout=120_000)
        page.evaluate("window.jupyterapp.commands.execute('notebook:run-all-cells')")
        approver = page.locator(".trainkit-approver input")
        approver.wait_for(state="visible", timeout=240_000)
        page.locator(".trainkit-check-config_reviewed input").check()
        approver.fill("Browser Tester")
        approver.press("Tab")
        button = page.locator("button.trainkit-signoff")
        page.wait_for_function("!document.querySelector('button.trainkit-signoff').disabled", timeout=10_000)
        button.click()
        gate_path = root / "runs" / "notebook" / "01_planning" / "gate.json"
        deadline = time.time() + 30
        record = {}
        while time.time() < deadline:
            record = json.loads(gate_path.read_text())
            if record.get("signoff"):
                break
            time.sleep(0.25)
        page.screenshot(path=str(root / "lab.png"))
        browser.close()
    assert record["state"] == "passed", record
    assert record["signoff"]["by"] == "Browser Tester"
    assert next(c for c in record["checks"] if c["id"] == "config_reviewed")["status"] == "pass"
    assert all(c["status"] == "pass" for c in record["checks"] if c["kind"] == "automatic")


def test_phase_report_opened_from_file_shows_the_gate_table(tmp_path):
    from playwright.sync_api import sync_playwright

    r = subprocess.run(["trainkit", "run", "--name", "b", "--runs-dir", str(tmp_path), "--stop-after", "1"],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    index = tmp_path / "b" / "index.html"
    report = tmp_path / "b" / "01_planning" / "report.html"
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        page = browser.new_page()
        requests = []
        page.on("request", lambda req: requests.append(req.url))
        page.goto(report.as_uri())
        table = page.locator(".trainkit-gate table")
        assert table.count() == 1
        assert "seeds_fixed" in table.inner_text() and "PASS" in table.inner_text()
        page.goto(index.as_uri())  # the run at a glance: the path diagram, the phase table, links that resolve
        assert page.locator("svg.trainkit-path rect").count() == 1
        assert "01_planning" in page.locator("svg.trainkit-path").text_content()
        assert "reproducibility_gate: passed" in page.locator("#phases").inner_text()
        page.click("text=report.html")
        assert page.locator(".trainkit-gate table").count() == 1
        browser.close()
    assert not [u for u in requests if u.startswith("http")], "the report fetched from the network"
