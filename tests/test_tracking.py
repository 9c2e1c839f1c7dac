"""MLflow tracking against a real MLflow: a server started here on 127.0.0.1 (SQLite behind it),
the local store in the runs folder, and the file store. Every record is read back through the
MLflow client and compared with the run folder it came from."""

import json
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from trainkit._io import sha256_file
from trainkit.config import config_hash, load_config
from trainkit.run import RunFolder
from trainkit.testing import tiny_config_file
from conftest import PAPERMILL, trainkit_here  # noqa: E402 (the tests folder is on sys.path)
from test_browser import _free_port  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
FAST = {"training.epochs": 8, "target.value": 0.5, "final.epochs": 12, "final.patience": 4}
# misses its target at Phase 5 (a waiver signs it), through Phase 3's "gain too small" to Phase 5
SHORT_OF_TARGET = {
    "training.epochs": 6,
    "target.value": 0.999,
    "final.epochs": 8,
    "final.patience": 3,
    "budget.clear_gain_points": 100.0,
    "budget.marginal_gain_points": 100.0,
}


@pytest.fixture(autouse=True)
def _in_tmp(tmp_path, monkeypatch):
    """Every command runs in an empty working folder, which must stay empty (no stray mlruns/, mlflow.db)."""
    work = tmp_path / "cwd"
    work.mkdir()
    monkeypatch.chdir(work)
    yield
    assert not list(work.iterdir()), "MLflow files left in the working folder"


def _trainkit(*args, cwd=None):
    """``trainkit ARGS``; a tracked run's phases in kernels (papermill), as a user runs them, while
    the pusher thread works in the pipeline's process."""
    env = dict(os.environ, **PAPERMILL)
    return subprocess.run(["trainkit", *map(str, args)], capture_output=True, text=True, timeout=1200, cwd=cwd, env=env)


def _client(uri):
    from mlflow import MlflowClient

    os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def _versions(uri, name):
    """The registered versions of ``name``. MLflow's registry looks logged models up through its
    global tracking URI (a file store's would create mlflow.db in the working folder): point it at ``uri``."""
    from trainkit._mlflow import global_uri

    with global_uri(uri):
        return _client(uri).search_model_versions(f"name = '{name}'")


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """``mlflow server`` on 127.0.0.1 at a free port, SQLite behind it, artifacts proxied."""
    d = tmp_path_factory.mktemp("mlflow-server")
    port = _free_port()
    log = open(d / "server.log", "w")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "mlflow",
            "server",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--backend-store-uri",
            f"sqlite:///{d / 'mlflow.db'}",
            "--artifacts-destination",
            str(d / "artifacts"),
            "--workers",
            "1",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        cwd=d,
        # no job runner: MLflow 3's server otherwise starts about eight Huey consumer processes (its
        # scorers' jobs), each a full MLflow import, that trainkit never uses and the tests pay for
        env=dict(os.environ, MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false"),
    )
    uri = f"http://127.0.0.1:{port}"
    for _ in range(240):
        try:
            urllib.request.urlopen(f"{uri}/health", timeout=1)
            break
        except OSError:
            assert proc.poll() is None, (d / "server.log").read_text()[-3000:]
            time.sleep(0.5)
    else:
        proc.kill()
        pytest.fail("mlflow server did not start on 127.0.0.1: " + (d / "server.log").read_text()[-3000:])
    yield uri
    proc.terminate()
    try:
        proc.wait(15)
    except subprocess.TimeoutExpired:
        proc.kill()
    log.close()


@pytest.fixture(scope="module")
def demo_run(server, tmp_path_factory):
    """The built-in demo, shortened (8 baseline epochs, one optimization round, 30 final epochs: the
    same path, 1 → 5, at half the cost), tracked live on the server; it stops at the production gate
    (exit 3)."""
    tmp = tmp_path_factory.mktemp("tracked")
    (tmp / "cwd").mkdir()
    short = ["--set", "training.epochs=8", "--set", "budget.max_optimization_iterations=1", "--set", "final.epochs=30"]
    r = subprocess.run(
        [
            "trainkit",
            "run",
            "--name",
            "demo",
            "--runs-dir",
            str(tmp),
            "--set",
            f"tracking.uri={server}",
            "--set",
            "tracking.experiment=demo",
            *short,
        ],
        capture_output=True,
        text=True,
        timeout=1200,
        cwd=tmp / "cwd",
        env=dict(os.environ, **PAPERMILL),
    )
    assert r.returncode == 3, r.stdout + r.stderr
    assert not list((tmp / "cwd").iterdir())  # nothing of MLflow's in the working folder
    assert "warning" not in r.stderr.lower(), r.stderr
    return tmp / "demo", r


def _runs(client, experiment, run):
    exp = client.get_experiment_by_name(experiment)
    assert exp is not None, f"no experiment {experiment!r}"
    found = client.search_runs([exp.experiment_id], f"tags.`trainkit.run` = '{run.name}'", max_results=1000)
    return {r.data.tags["trainkit.key"]: r for r in found}


def assert_mirrors(client, experiment, run):
    """The MLflow records of ``run`` are its folder's: one parent with the config and its hash, a
    nested run per phase folder with its decision and gate, one per fit under its phase, and every
    numeric field of every metrics.jsonl row at step = epoch. Returns the runs by key."""
    by_key = _runs(client, experiment, run)
    parent = by_key["(run)"]
    manifest = json.loads((run / "run.json").read_text())
    assert parent.info.run_name == run.name and "mlflow.parentRunId" not in parent.data.tags
    assert parent.data.params["config_hash"] == config_hash(load_config(run / "config.yaml"))
    assert parent.data.params["optimizer.lr"] == str(load_config(run / "config.yaml").optimizer.lr)
    assert parent.data.tags["trainkit.status"] == manifest["status"]
    phase_keys = set()
    for e in manifest["phases"]:
        d = RunFolder(run).phase_dir(e["phase"], e["attempt"])
        key = str(d.relative_to(run))
        phase_keys.add(key)
        r = by_key[key]
        assert r.data.tags["mlflow.parentRunId"] == parent.info.run_id and r.data.tags["trainkit.phase"] == e["phase"]
        assert "config_hash" in r.data.params
        decision = json.loads((d / "decision.json").read_text())
        assert (
            r.data.tags["trainkit.decision"] == decision["option"]
            and r.data.tags["trainkit.reason"] == decision["reason"]
        )
        gate = json.loads((d / "gate.json").read_text())
        assert r.data.tags["trainkit.gate"] == gate["gate"]
        names = {a.path for a in client.list_artifacts(r.info.run_id)}
        assert {"gate.json", "decision.json", "report.html"} <= names, names
    fits = 0
    for m in run.rglob("metrics.jsonl"):
        key = str(m.parent.relative_to(run))
        r = by_key[key]
        if key not in phase_keys:  # a fit below its phase
            fits += 1
            owner = next(k for k in phase_keys if key.startswith(k + "/"))
            assert r.data.tags["mlflow.parentRunId"] == by_key[owner].info.run_id
        rows = [json.loads(line) for line in m.read_text().splitlines() if line.strip()]
        rows = [row for row in rows if "epoch" in row]
        assert rows, m
        for field in rows[0]:
            history = sorted(client.get_metric_history(r.info.run_id, field), key=lambda h: h.step)
            assert [(h.step, h.value) for h in history] == [(row["epoch"], float(row[field])) for row in rows], (
                key,
                field,
            )
    return by_key, fits


@pytest.mark.slow
def test_the_demo_tracked_on_a_server_then_signed_registers_a_model_version(demo_run, server):
    run, first = demo_run
    client = _client(server)
    by_key, fits = assert_mirrors(client, "demo", run)
    assert fits >= 2, "Phase 4's candidates and seeds are nested runs"
    seed = next(r for k, r in by_key.items() if "/seed-" in k)
    assert seed.data.tags["trainkit.candidate"] and seed.data.tags["trainkit.seed"].isdigit()
    assert seed.data.params["config_hash"] == config_hash(
        load_config(run / seed.data.tags["trainkit.key"] / "training_config.yaml")
    )
    p5 = by_key["05_finalization"]
    assert p5.data.tags["trainkit.gate_state"] == "awaiting_signoff"
    assert {"export"} <= {a.path for a in client.list_artifacts(p5.info.run_id)}
    assert {a.path for a in client.list_artifacts(p5.info.run_id, "export")} >= {"export/model.onnx", "export/model.ts"}
    # the final model, with its signature, serves the same logits as the ONNX file it came from
    import mlflow
    import numpy as np
    import onnxruntime as ort

    model_uri = json.loads((run / "tracking.json").read_text())[server]["demo"]["model"]["model_uri"]
    shape = json.loads((run / "05_finalization" / "export.json").read_text())["input_shape"]
    mlflow.set_tracking_uri(server)
    try:
        info = mlflow.models.get_model_info(model_uri)
        assert info.signature is not None and info.saved_input_example_info is not None
        x = np.random.default_rng(0).normal(size=(3, *shape)).astype(np.float32)
        served = mlflow.pyfunc.load_model(model_uri).predict(x)
    finally:
        mlflow.set_tracking_uri(None)
    sess = ort.InferenceSession(str(run / "05_finalization" / "model.onnx"), providers=["CPUExecutionProvider"])
    expected = sess.run(None, {sess.get_inputs()[0].name: x})[0]
    served = next(iter(served.values())) if isinstance(served, dict) else np.asarray(served)
    assert np.allclose(served, expected, atol=1e-5)
    assert not _versions(server, "demo")  # nothing registered before the sign-off

    s = _trainkit("signoff", run, "--phase", "5", "--by", "pat", "--check", "stakeholder_approval")
    assert s.returncode == 0 and "warning" not in s.stderr.lower(), s.stdout + s.stderr
    versions = _versions(server, "demo")
    assert len(versions) == 1
    v = versions[0]
    assert v.tags["trainkit.gate_sha256"] == sha256_file(run / "05_finalization" / "gate.json")
    assert v.tags["trainkit.signed_by"] == "pat" and v.tags["trainkit.waived"] == "none" and v.run_id == p5.info.run_id
    again = _trainkit("run", "--resume", "--name", "demo", "--runs-dir", run.parent)
    assert again.returncode == 0, again.stdout + again.stderr
    parent = client.get_run(by_key["(run)"].info.run_id)
    assert parent.info.status == "FINISHED" and parent.data.tags["trainkit.status"] == "ready_to_deploy"
    assert len(_versions(server, "demo")) == 1  # the same signed record: no second version
    assert len(_runs(client, "demo", run)) == len(by_key)  # the resume reused every run
    status = _trainkit("status", run)
    assert f"MLflow: {server}, run {by_key['(run)'].info.run_id}, model version 1 of 'demo'" in status.stdout, (
        status.stdout
    )
    index = (run / "index.html").read_text()
    assert f"{server}/#/experiments/{by_key['(run)'].info.experiment_id}/runs/{by_key['(run)'].info.run_id}" in index


@pytest.mark.slow
@pytest.mark.browser
def test_mlflow_ui_lists_the_demo_run_and_its_phases(demo_run, server):
    from playwright.sync_api import sync_playwright

    from test_browser import ARGS, CHROMIUM

    run, _ = demo_run
    exp = _client(server).get_experiment_by_name("demo")
    phases = [
        str(RunFolder(run).phase_dir(e["phase"], e["attempt"]).relative_to(run))
        for e in json.loads((run / "run.json").read_text())["phases"]
    ]
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        page = browser.new_page(viewport={"width": 1600, "height": 1400})
        page.goto(f"{server}/#/experiments/{exp.experiment_id}/runs", wait_until="load")
        row = page.locator("[role=row]", has=page.get_by_text("demo", exact=True)).first
        row.wait_for(timeout=90_000)
        row.locator("button[data-component-id*='runnamecellrenderer']").click()  # expand its nested runs
        for name in phases:
            page.get_by_text(name, exact=True).first.wait_for(timeout=30_000)
        shown = " ".join(page.locator("[role=row]").all_inner_texts())
        browser.close()
    assert all(name in shown for name in phases), (phases, shown)


@pytest.mark.slow
def test_local_store_then_a_waiver_on_the_version_then_the_file_store(tmp_path):
    """``--set tracking.mlflow=true``: the store is runs/mlflow.db; a waived check shows on the
    registered version; ``trainkit track --uri file:...`` mirrors the same run into a file store."""
    runs = tmp_path / "runs"
    r = _trainkit(
        "run",
        tiny_config_file(tmp_path, SHORT_OF_TARGET),
        "--name",
        "short",
        "--runs-dir",
        runs,
        "--set",
        "tracking.mlflow=true",
    )
    assert r.returncode == 1 and "test_meets_target" in r.stderr, r.stdout + r.stderr
    assert (runs / "mlflow.db").is_file() and (runs / "mlartifacts").is_dir()
    local = f"sqlite:///{runs / 'mlflow.db'}"
    assert_mirrors(_client(local), "trainkit", runs / "short")
    s = _trainkit(
        "signoff",
        runs / "short",
        "--phase",
        "5",
        "--by",
        "pat",
        "--check",
        "stakeholder_approval",
        "--waive",
        "test_meets_target=0.97 is enough for the pilot",
    )
    assert s.returncode == 0, s.stdout + s.stderr
    (v,) = _versions(local, "trainkit")
    assert v.tags["trainkit.waived"] == "test_meets_target"
    assert v.tags["trainkit.waiver.test_meets_target"] == "0.97 is enough for the pilot (by pat)"
    assert "Waived test_meets_target" in v.description

    store = (tmp_path / "mlruns").as_uri()
    t = _trainkit("track", runs / "short", "--uri", store, "--experiment", "archive")
    assert t.returncode == 0 and "model version 1" in t.stdout, t.stdout + t.stderr
    by_key, _ = assert_mirrors(_client(store), "archive", runs / "short")
    (fv,) = _versions(store, "archive")
    assert fv.tags["trainkit.gate_sha256"] == sha256_file(runs / "short" / "05_finalization" / "gate.json")
    again = _trainkit("track", runs / "short", "--uri", store, "--experiment", "archive")
    assert again.returncode == 0 and "0 new run(s), 0 metric point(s), 0 artifact(s)" in again.stdout, again.stdout
    assert len(_runs(_client(store), "archive", runs / "short")) == len(by_key)


@pytest.mark.slow
def test_server_down_is_one_warning_then_trainkit_track_fills_the_server(tmp_path, server):
    """On tabular data (an .npz of generated blobs, not digits)."""
    from trainkit.testing import make_npz

    runs = tmp_path / "runs"
    dead = f"http://127.0.0.1:{_free_port()}"
    cfg = tiny_config_file(
        tmp_path, {**FAST, "data.source": "npz", "data.root": str(make_npz(tmp_path / "t.npz", n=400))}
    )
    r = _trainkit(
        "run",
        cfg,
        "--name",
        "offline",
        "--runs-dir",
        runs,
        "--set",
        f"tracking.uri={dead}",
        "--approve",
        "stakeholder_approval=ci",
    )
    assert r.returncode == 0 and "ready to deploy" in r.stdout, r.stdout + r.stderr
    assert r.stderr.count("warning: MLflow tracking") == 1, r.stderr
    assert f"trainkit track {runs / 'offline'}" in r.stderr and dead in r.stderr
    t = _trainkit("track", runs / "offline", "--uri", server, "--experiment", "later")
    assert t.returncode == 0, t.stdout + t.stderr
    client = _client(server)
    by_key, _ = assert_mirrors(client, "later", runs / "offline")
    assert set(by_key) >= {"(run)", "01_planning", "02_baseline/attempt-1", "05_finalization"}
    (v,) = _versions(server, "later")
    assert v.tags["trainkit.gate_sha256"] == sha256_file(runs / "offline" / "05_finalization" / "gate.json")


@pytest.mark.slow
def test_trainkit_track_refuses_clearly_what_it_cannot_push(tmp_path):
    from trainkit.run import init_run

    r = trainkit_here("track", tmp_path, "--uri", (tmp_path / "mlruns").as_uri())
    assert r.returncode == 2 and "not a trainkit run folder" in r.stderr, r.stderr
    run = tmp_path / "runs" / "r"
    init_run(run, "r")
    bare = trainkit_here("track", run, "--uri", "some/folder")  # would land relative to wherever it runs
    assert bare.returncode == 2 and "needs a scheme" in bare.stderr and "file:///" in bare.stderr, bare.stderr
    (run / "tracking.json").write_text("[1, 2")
    broken = _trainkit("track", run, "--uri", (tmp_path / "mlruns").as_uri())
    assert broken.returncode == 1 and "tracking.json" in broken.stderr and "Traceback" not in broken.stderr, (
        broken.stderr
    )
    assert (run / "tracking.json").read_text() == "[1, 2"  # left as it was, for the user to look at


def test_live_pushes_send_the_metrics_of_a_fit_while_it_trains(tmp_path):
    """The pipeline's pusher sends complete metrics.jsonl rows every live_interval_s while a phase
    runs (a half-written line waits), and nothing twice."""
    from trainkit.run import init_run, record_phase
    from trainkit.tracking import LiveTracker, Target

    run = tmp_path / "runs" / "live"
    init_run(run, "live")
    record_phase(run, "02_baseline", 1, status="running")
    d = run / "02_baseline" / "attempt-1"
    d.mkdir(parents=True)
    rows = [
        {"epoch": i, "step": 10 * (i + 1), "val_accuracy": 0.5 + i / 10, "train_loss": 1.0 / (i + 1)} for i in range(3)
    ]
    (d / "metrics.jsonl").write_text(json.dumps(rows[0]) + "\n" + json.dumps(rows[1])[:20])  # a line being written
    uri = (tmp_path / "mlruns").as_uri()
    tracker = LiveTracker(run, Target(uri=uri, experiment="live", live_interval_s=1.0)).start()
    client = _client(uri)

    def history():
        by_key = _runs(client, "live", run) if client.get_experiment_by_name("live") else {}
        r = by_key.get("02_baseline/attempt-1")
        return [(h.step, h.value) for h in client.get_metric_history(r.info.run_id, "val_accuracy")] if r else []

    deadline = time.time() + 60
    while history() != [(0, 0.5)] and time.time() < deadline:
        time.sleep(0.3)
    assert history() == [(0, 0.5)]
    (d / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))  # two more epochs, mid-phase
    while len(history()) < 3 and time.time() < deadline:
        time.sleep(0.3)
    assert sorted(history()) == [(0, 0.5), (1, 0.6), (2, 0.7)]
    assert tracker.close() is not None and tracker.failed is None
    assert sorted(history()) == [(0, 0.5), (1, 0.6), (2, 0.7)]  # the last push sent nothing twice


_RACE = """
import sys, threading
import trainkit.tracking as tracking
from trainkit.tracking import LiveTracker, Target

go, importing, errors = threading.Event(), threading.Event(), []

def push_run(run_dir, target, metrics_only=False):  # what MLflow's first push does: is IPython running?
    go.wait()
    importing.set()
    try:
        import IPython
    except Exception as exc:
        errors.append(repr(exc))
    raise RuntimeError("no server here")

def no_native_id():  # the thread keeps its priority, so that the two imports really overlap
    raise AttributeError

tracking.push_run, tracking.threading_native_id = push_run, no_native_id
tracker = LiveTracker(sys.argv[1], Target(uri="http://127.0.0.1:9"), warn=lambda message: None).start()
go.set()
importing.wait()
try:  # what papermill does at the same moment to find the kernel (jupyter_client's kernel dirs)
    from IPython.paths import get_ipython_dir
except Exception as exc:
    errors.append(repr(exc))
tracker.close(timeout=30)
print(errors)
"""


@pytest.mark.slow
def test_the_live_pusher_thread_and_the_phase_start_import_ipython_safely(tmp_path):
    """The tracked demo once failed its Phase 1 with ``KeyError: 'IPython'``: the pusher thread's
    first push and papermill's kernel lookup imported IPython at the same moment (its circular
    imports break on two threads in Python 3.11). Started at the same instant, both imports work."""
    r = subprocess.run([sys.executable, "-c", _RACE, str(tmp_path)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.strip().splitlines()[-1] == "[]", r.stdout + r.stderr[-3000:]


def test_a_tracked_run_refuses_the_in_process_executor(tmp_path, monkeypatch):
    """docs/design.md, "Executors": a tracked run's phases run in kernels, never beside the pusher
    thread in one process; asked for both, trainkit run says so before anything is written."""
    monkeypatch.setenv("TRAINKIT_EXECUTOR", "inprocess")
    cfg = tiny_config_file(tmp_path, {"tracking.uri": (tmp_path / "mlruns").as_uri()})
    r = trainkit_here("run", cfg, "--name", "t", "--runs-dir", tmp_path / "runs")
    assert r.returncode == 2 and "TRAINKIT_EXECUTOR" in r.stderr and "inprocess cannot run a tracked run" in r.stderr, (
        r.stderr
    )
    assert "Traceback" not in r.stderr
    assert not (tmp_path / "runs" / "t").exists() and not (tmp_path / "mlruns").exists()


@pytest.mark.slow
def test_tracking_section_and_the_config_hash():
    from trainkit.errors import ConfigError
    from trainkit.testing import tiny_config

    off = tiny_config()
    assert not off.tracking.enabled
    assert tiny_config({"tracking.mlflow": True}).tracking.enabled
    assert tiny_config({"tracking.uri": "http://h:5000"}).tracking.enabled
    assert not tiny_config({"tracking.uri": "http://h:5000", "tracking.mlflow": False}).tracking.enabled
    # where a run is logged does not change the recipe: the same hash, tracked or not
    assert config_hash(tiny_config({"tracking.uri": "http://h:5000", "tracking.experiment": "x"})) == config_hash(off)
    with pytest.raises(ConfigError) as e:
        tiny_config({"tracking.server": "x"})
    assert "tracking.server" in str(e.value) and "uri" in str(e.value)
    with pytest.raises(ConfigError):
        tiny_config({"tracking.live_interval_s": 0})


def test_redact_hides_a_password_in_the_uri():
    from trainkit.tracking import redact

    assert redact("http://alice:s3cret@host:5000/") == "http://alice:***@host:5000/"
    assert redact("postgresql://u:pw@db/mlflow") == "postgresql://u:***@db/mlflow"
    assert redact("sqlite:///runs/mlflow.db") == "sqlite:///runs/mlflow.db"


@pytest.mark.slow
def test_tracking_asked_for_without_mlflow_installed_is_exit_2_before_the_run_starts(tmp_path):
    code = (
        "import sys; sys.modules['mlflow'] = None\n"  # as if trainkit[mlflow] were not installed
        "from trainkit.cli import main\n"
        f"sys.exit(main(['run', {str(tiny_config_file(tmp_path))!r}, '--name', 'x', '--runs-dir', "
        f"{str(tmp_path / 'runs')!r}, '--set', 'tracking.mlflow=true']))"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert r.returncode == 2, r.stdout + r.stderr
    assert "tracking.mlflow" in r.stderr and "pip install 'trainkit[mlflow]'" in r.stderr
    assert not (tmp_path / "runs" / "x").exists()


@pytest.mark.slow
def test_the_default_install_and_an_untracked_run_never_import_mlflow(tmp_path):
    import tomllib

    meta = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert not any("mlflow" in dep for dep in meta["dependencies"])
    assert any(dep.startswith("mlflow") for dep in meta["optional-dependencies"]["mlflow"])
    code = (
        "import sys, trainkit, trainkit.cli, trainkit.pipeline, trainkit.tracking, trainkit.widgets, trainkit.sweep\n"
        "from trainkit.testing import run_phase_inprocess, tiny_config_file\n"
        "run = sys.argv[1]\n"
        "run_phase_inprocess('01_planning', run, config_path=str(tiny_config_file(sys.argv[2])))\n"
        "run_phase_inprocess('02_baseline', run, attempt=1)  # trains, evaluates its gate, pushes nothing\n"
        "import json, pathlib\n"
        "assert json.loads((pathlib.Path(run) / '02_baseline/attempt-1/gate.json').read_text())['gate']\n"
        "assert 'mlflow' not in sys.modules, sorted(m for m in sys.modules if 'mlflow' in m)\n"
    )
    r = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path / "run"), str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
    )
    assert r.returncode == 0, r.stderr
    assert not (tmp_path / "run" / "tracking.json").exists()  # nothing was pushed anywhere


@pytest.mark.slow
def test_a_phase_run_by_hand_pushes_at_its_gate_and_the_widget_sign_off_follows(tmp_path):
    """In a notebook (no pipeline process), finishing the gate pushes the phase; signing it in the
    gate widget pushes the signer."""
    from trainkit.testing import run_phase_inprocess
    from trainkit.widgets import GateWidget

    import numpy as np

    from trainkit.testing import signals

    x, y = signals(n=300, classes=3, length=32)  # 1-D signals (N, C, L), not digits
    np.savez(tmp_path / "signals.npz", x=x, y=y)
    store = (tmp_path / "mlruns").as_uri()
    cfg = tiny_config_file(
        tmp_path,
        {
            "tracking.uri": store,
            "tracking.experiment": "by-hand",
            "data.source": "npz",
            "data.root": str(tmp_path / "signals.npz"),
        },
    )
    run = tmp_path / "runs" / "hand"
    run_phase_inprocess("01_planning", run, config_path=str(cfg), auto_signoff=False)
    client = _client(store)
    p1 = _runs(client, "by-hand", run)["01_planning"]
    assert p1.data.tags["trainkit.gate_state"] == "awaiting_signoff" and "trainkit.signed_by" not in p1.data.tags
    assert "config_hash" in p1.data.params
    w = GateWidget(run / "01_planning" / "gate.json", run)
    for box in w.boxes.values():
        box.value = True
    w.approver.value = "carol"
    w.button.click()
    assert "Signed off by carol" in w.message.value and "warning" not in w.message.value
    p1 = client.get_run(p1.info.run_id)
    assert p1.data.tags["trainkit.gate_state"] == "passed" and p1.data.tags["trainkit.signed_by"] == "carol"
    # a sweep in the run folder: one nested run per trial, with its parameters and every epoch
    s = subprocess.run(
        ["trainkit", "sweep", str(run), "--trials", "2", "--workers", "1"], capture_output=True, text=True, timeout=600
    )
    assert s.returncode == 0 and "warning" not in s.stderr.lower(), s.stdout + s.stderr
    import optuna

    study = optuna.load_study(study_name="trainkit", storage=f"sqlite:///{run / '04_optimization' / 'sweep.db'}")
    by_key = _runs(client, "by-hand", run)
    sweep = by_key["sweep/trainkit"]
    assert sweep.data.tags["mlflow.parentRunId"] == by_key["(run)"].info.run_id
    assert sweep.data.params["config_hash"] == config_hash(load_config(run / "04_optimization" / "sweep_config.yaml"))
    for t in study.trials:
        tr = by_key[f"sweep/trainkit/trial-{t.number}"]
        assert (
            tr.data.tags["mlflow.parentRunId"] == sweep.info.run_id
            and tr.data.tags["trainkit.trial_state"] == t.state.name
        )
        assert {k: float(v) for k, v in tr.data.params.items()} == pytest.approx(t.params)
        history = sorted(client.get_metric_history(tr.info.run_id, "val_accuracy"), key=lambda h: h.step)
        assert [(h.step, h.value) for h in history] == [
            (row["epoch"], row["val_accuracy"]) for row in t.user_attrs["history"]
        ]
        assert len(history) >= 1
