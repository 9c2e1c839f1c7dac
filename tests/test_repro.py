import json
import random

import numpy as np
import pytest
import torch

from trainkit.data import load_data
from trainkit.diagnostics.probes import determinism_probe
from trainkit.repro import capture_environment, restore_rng_state, rng_state, seed_everything
from trainkit.testing import tiny_config


def test_rng_state_roundtrip():
    seed_everything(3)
    state = rng_state()
    a = (random.random(), np.random.rand(), torch.rand(1).item())
    restore_rng_state(state)
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == a


def test_environment_capture_without_gpu_degrades_cleanly():
    env = capture_environment()
    assert json.loads(json.dumps(env)) == env  # plain JSON as captured: environment.json holds exactly this
    assert env["torch"] == torch.__version__ and env["python"]
    assert "git" in env and "packages" in env and env["packages"]["torch"]
    assert env["gpu"]["cuda_available"] == torch.cuda.is_available()
    if not torch.cuda.is_available():
        assert env["gpu"]["devices"] == []


@pytest.mark.slow
def test_determinism_probe_bitwise_on_cpu():
    cfg = tiny_config()
    r = determinism_probe(cfg, load_data(cfg), epochs=2)
    assert r["device"] == "cpu" and r["identical"] and r["passed"] and r["max_abs_diff"] == 0.0
    assert len(r["losses_a"]) == 6


@pytest.mark.slow
def test_determinism_probe_detects_a_difference(monkeypatch):
    """A nondeterministic model (dropout reseeded from the clock) must fail the probe."""
    import time

    from trainkit import models

    def noisy(input_shape, num_classes):
        torch.manual_seed(time.perf_counter_ns() % 2**31)
        return models.mlp(input_shape, num_classes, hidden=[16])

    monkeypatch.setitem(models.MODELS, "noisy", noisy)
    cfg = tiny_config({"model.name": "noisy", "model.kwargs": {}})
    r = determinism_probe(cfg, load_data(cfg), epochs=1)
    assert not r["identical"] and not r["passed"]
