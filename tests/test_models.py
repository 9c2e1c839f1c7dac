import pytest
import torch

from trainkit.errors import ModelError
from trainkit.models import build_model, model_summary


@pytest.mark.parametrize(
    "name,shape",
    [
        ("mlp", (1, 8, 8)),
        ("mlp", (5,)),
        ("cnn", (1, 8, 8)),
        ("cnn", (3, 32, 32)),
        ("resnet18", (3, 16, 16)),
        ("trainkit.testing:tiny_model", (1, 8, 8)),
    ],
)
def test_registry_builds_and_runs(name, shape):
    m = build_model(name, shape, 7)
    assert m(torch.randn(2, *shape)).shape == (2, 7)


def test_unknown_model_lists_valid_names():
    with pytest.raises(ModelError) as e:
        build_model("transformer", (1, 8, 8), 10)
    assert "mlp" in str(e.value) and "cnn" in str(e.value) and "resnet18" in str(e.value)


def test_bad_kwargs_and_bad_import():
    with pytest.raises(ModelError, match="hidden_size"):
        build_model("mlp", (4,), 2, {"hidden_size": 3})
    with pytest.raises(ModelError, match="cannot import"):
        build_model("nope.mod:fn", (4,), 2)
    with pytest.raises(ModelError, match="expects images"):
        build_model("cnn", (4,), 2)


def test_summary_counts_parameters():
    s = model_summary(build_model("mlp", (1, 8, 8), 10, {"hidden": [16]}))
    assert s["total_params"] == 64 * 16 + 16 + 16 * 10 + 10
    assert [r["type"] for r in s["layers"]] == ["Flatten", "Linear", "ReLU", "Linear"]
