"""Model registry (``tabm`` and ``mlp`` for vectors, ``cnn1d`` for signals ``(C, L)``, ``cnn`` and
``resnet18`` for images ``(C, H, W)``) and the user's own ``package.module:function``.

A builder takes ``input_shape`` (without the batch axis), ``num_classes`` and its own keyword
arguments from ``model.kwargs``. ``model.init: kaiming`` re-initialises any model's linear and
conv layers after building (He-normal weights, zero biases): the cure for units that an init
left dead. A model with a ``fit_data(x)`` method (TabM's bin edges) gets a sample of the train
rows before it trains: :func:`build_for` builds every model that trains.
"""

from __future__ import annotations

import importlib
import inspect
import math
from typing import Any, Callable

from torch import nn

from trainkit.errors import ModelError
from trainkit.tabular import tabm  # the tabm and rtdl_num_embeddings packages load when a TabM is built

__all__ = ["build_model", "build_for", "register_model", "model_summary", "reinitialize", "MODELS", "family_for"]

_ACTIVATIONS: dict[str, Callable[[], nn.Module]] = {
    "relu": nn.ReLU,
    "leaky_relu": lambda: nn.LeakyReLU(0.1),
    "gelu": nn.GELU,
}


def _act(name: str) -> nn.Module:
    if name not in _ACTIVATIONS:
        raise ModelError(f"model.kwargs.activation: {name!r} unknown; valid: {', '.join(_ACTIVATIONS)}")
    return _ACTIVATIONS[name]()


def mlp(
    input_shape: tuple[int, ...],
    num_classes: int,
    hidden: tuple[int, ...] | list[int] = (128,),
    dropout: float = 0.0,
    activation: str = "relu",
    batch_norm: bool = False,
) -> nn.Module:
    """Flatten → [Linear → (BatchNorm) → activation → Dropout] per hidden width → Linear."""
    layers: list[nn.Module] = [nn.Flatten()]
    width = math.prod(input_shape)
    for h in hidden:
        layers += [nn.Linear(width, int(h))] + ([nn.BatchNorm1d(int(h))] if batch_norm else []) + [_act(activation)]
        if dropout:
            layers.append(nn.Dropout(dropout))
        width = int(h)
    layers.append(nn.Linear(width, num_classes))
    return nn.Sequential(*layers)


def cnn(
    input_shape: tuple[int, ...],
    num_classes: int,
    channels: tuple[int, ...] | list[int] = (32, 64),
    dropout: float = 0.0,
    batch_norm: bool = True,
    activation: str = "relu",
) -> nn.Module:
    """Small conv net for 1- or 3-channel images of any small size: conv blocks, global pool, linear."""
    if len(input_shape) != 3:
        raise ModelError(
            f"model cnn expects images (C, H, W); got input shape {tuple(input_shape)}; "
            "use mlp for vectors (F,), cnn1d for signals (C, L)"
        )
    c_in = input_shape[0]
    layers: list[nn.Module] = []
    for i, c in enumerate(channels):
        layers += [nn.Conv2d(c_in, int(c), 3, padding=1, bias=not batch_norm)]
        layers += [nn.BatchNorm2d(int(c))] if batch_norm else []
        layers += [_act(activation)]
        if i < len(channels) - 1 and min(input_shape[1:]) >= 2 ** (i + 2):
            layers.append(nn.MaxPool2d(2))
        c_in = int(c)
    return _pooled_head(layers, nn.AdaptiveAvgPool2d(1), c_in, dropout, num_classes)


def cnn1d(
    input_shape: tuple[int, ...],
    num_classes: int,
    channels: tuple[int, ...] | list[int] = (32, 64),
    kernel: int = 5,
    dropout: float = 0.0,
    batch_norm: bool = True,
    activation: str = "relu",
) -> nn.Module:
    """Small 1-D conv net for signals (C, L): conv blocks (pooling while the signal is long), global pool, linear."""
    if len(input_shape) != 2:
        raise ModelError(
            f"model cnn1d expects signals (C, L); got input shape {tuple(input_shape)}; "
            "use mlp for vectors (F,), cnn for images (C, H, W)"
        )
    c_in, length = int(input_shape[0]), int(input_shape[1])
    layers: list[nn.Module] = []
    for c in channels:
        layers += [nn.Conv1d(c_in, int(c), kernel, padding=kernel // 2, bias=not batch_norm)]
        layers += [nn.BatchNorm1d(int(c))] if batch_norm else []
        layers += [_act(activation)]
        if length >= 8:
            layers.append(nn.MaxPool1d(2))
            length //= 2
        c_in = int(c)
    return _pooled_head(layers, nn.AdaptiveAvgPool1d(1), c_in, dropout, num_classes)


def _pooled_head(layers: list[nn.Module], pool: nn.Module, width: int, dropout: float, num_classes: int) -> nn.Module:
    """Conv blocks → global pool → flatten → (dropout) → linear classifier."""
    layers += [pool, nn.Flatten()] + ([nn.Dropout(dropout)] if dropout else []) + [nn.Linear(width, num_classes)]
    return nn.Sequential(*layers)


def family_for(input_shape: tuple[int, ...] | list[int]) -> str | None:
    """The built-in convolutional family that suits an input shape: cnn for images of at least
    8 × 8, cnn1d for signals of at least 16 steps, None for vectors."""
    shape = list(input_shape)
    if len(shape) == 3 and min(shape[1:]) >= 8:
        return "cnn"
    if len(shape) == 2 and shape[1] >= 16:
        return "cnn1d"
    return None


def resnet18(input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    """torchvision's ResNet-18 (random init, no download) with a 3x3 stem for small images."""
    from torchvision.models import resnet18 as tv_resnet18

    if len(input_shape) != 3:
        raise ModelError(f"model resnet18 expects images (C, H, W); got {tuple(input_shape)}")
    m = tv_resnet18(weights=None, num_classes=num_classes)
    m.conv1 = nn.Conv2d(input_shape[0], 64, 3, stride=1, padding=1, bias=False)
    m.maxpool = nn.Identity()
    return m


MODELS: dict[str, Callable[..., nn.Module]] = {
    "tabm": tabm,
    "mlp": mlp,
    "cnn": cnn,
    "cnn1d": cnn1d,
    "resnet18": resnet18,
}


def reinitialize(model: nn.Module, slope: float = 0.0) -> nn.Module:
    """He-normal weights and zero biases for every linear and conv layer; norms reset to identity."""
    for m in model.modules():
        if isinstance(m, (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)):
            nn.init.kaiming_normal_(m.weight, a=slope, nonlinearity="leaky_relu" if slope else "relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d, nn.LayerNorm)) and m.weight is not None:
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
    return model


def register_model(name: str, builder: Callable[..., nn.Module]) -> None:
    """Add a builder to the registry under ``name``."""
    MODELS[name] = builder


def _resolve(name: str) -> Callable[..., nn.Module]:
    if name in MODELS:
        return MODELS[name]
    if ":" in name:
        mod, _, fn = name.partition(":")
        try:
            return getattr(importlib.import_module(mod), fn)
        except (ImportError, AttributeError) as exc:
            raise ModelError(
                f"model.name={name!r}: cannot import ({exc}); expected 'package.module:function'"
            ) from None
    raise ModelError(
        f"model.name: unknown model {name!r}; valid: {', '.join(sorted(MODELS))} or 'package.module:function'"
    )


FIT_DATA_ROWS = 20000  # rows of train a data-aware model (TabM's bin edges) sees before it trains


def build_for(cfg: Any, bundle: Any, device: Any = "cpu") -> nn.Module:
    """The model of ``cfg`` for ``bundle``, on ``device``, ready to train: built, and when it has a
    ``fit_data(x)`` method, given a seeded sample of at most ``FIT_DATA_ROWS`` train rows (the
    inputs the model will see)."""
    m = cfg.model
    model = build_model(m.name, bundle.input_shape, bundle.num_classes, m.kwargs, m.init)
    if callable(getattr(model, "fit_data", None)):
        x, _, _ = next(iter(bundle.batches("train", FIT_DATA_ROWS, shuffle=True, seed=cfg.training.seed)))
        model.fit_data(x)
    return model.to(device)


def build_model(
    name: str,
    input_shape: tuple[int, ...],
    num_classes: int,
    kwargs: dict[str, Any] | None = None,
    init: str = "default",
) -> nn.Module:
    """Build a model; bad kwargs or a builder that fails raise ModelError naming the model.
    ``init="kaiming"`` re-initialises it (:func:`reinitialize`)."""
    builder = _resolve(name)
    kwargs = dict(kwargs or {})
    params = inspect.signature(builder).parameters
    extra = {"input_shape": tuple(input_shape), "num_classes": num_classes}
    accepts_any = any(p.kind == p.VAR_KEYWORD for p in params.values())
    call = {k: v for k, v in extra.items() if k in params or accepts_any}
    unknown = [k for k in kwargs if k not in params and not accepts_any]
    if unknown:
        valid = [k for k in params if k not in extra]
        raise ModelError(f"model.kwargs: {unknown} not accepted by {name!r}; valid: {valid}")
    try:
        model = builder(**call, **kwargs)
    except ModelError:
        raise
    except Exception as exc:
        raise ModelError(f"model {name!r} failed to build with kwargs {kwargs}: {type(exc).__name__}: {exc}") from None
    if not isinstance(model, nn.Module):
        raise ModelError(f"model {name!r} returned {type(model).__name__}; expected a torch.nn.Module")
    if init == "kaiming":
        reinitialize(model, 0.1 if any(isinstance(m, nn.LeakyReLU) for m in model.modules()) else 0.0)
    return model


def model_summary(model: nn.Module) -> dict[str, Any]:
    """Parameter counts and a layer table (leaf modules) for reports."""
    rows = []
    for name, mod in model.named_modules():
        if list(mod.children()):
            continue
        n = sum(p.numel() for p in mod.parameters(recurse=False))
        rows.append({"layer": name or type(mod).__name__, "type": type(mod).__name__, "params": n})
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return {"total_params": total, "trainable_params": trainable, "layers": rows}
