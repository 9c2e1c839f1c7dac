"""Model registry (``mlp``, ``cnn``, ``resnet18``) and the user's own ``package.module:function``.

A builder takes ``input_shape`` (without the batch axis), ``num_classes`` and its own keyword
arguments from ``model.kwargs``.
"""

from __future__ import annotations

import importlib
import inspect
import math
from typing import Any, Callable

from torch import nn

from trainkit.errors import ModelError

__all__ = ["build_model", "register_model", "model_summary", "MODELS"]


def mlp(input_shape: tuple[int, ...], num_classes: int, hidden: tuple[int, ...] | list[int] = (128,),
        dropout: float = 0.0) -> nn.Module:
    """Flatten → [Linear → ReLU → Dropout] per hidden width → Linear."""
    layers: list[nn.Module] = [nn.Flatten()]
    width = math.prod(input_shape)
    for h in hidden:
        layers += [nn.Linear(width, int(h)), nn.ReLU()]
        if dropout:
            layers.append(nn.Dropout(dropout))
        width = int(h)
    layers.append(nn.Linear(width, num_classes))
    return nn.Sequential(*layers)


def cnn(input_shape: tuple[int, ...], num_classes: int, channels: tuple[int, ...] | list[int] = (32, 64),
        dropout: float = 0.0, batch_norm: bool = True) -> nn.Module:
    """Small conv net for 1- or 3-channel images of any small size: conv blocks, global pool, linear."""
    if len(input_shape) != 3:
        raise ModelError(f"model cnn expects images (C, H, W); got input shape {tuple(input_shape)}; use mlp for vectors")
    c_in = input_shape[0]
    layers: list[nn.Module] = []
    for i, c in enumerate(channels):
        layers += [nn.Conv2d(c_in, int(c), 3, padding=1, bias=not batch_norm)]
        layers += [nn.BatchNorm2d(int(c))] if batch_norm else []
        layers += [nn.ReLU()]
        if i < len(channels) - 1 and min(input_shape[1:]) >= 2 ** (i + 2):
            layers.append(nn.MaxPool2d(2))
        c_in = int(c)
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten()]
    if dropout:
        layers.append(nn.Dropout(dropout))
    layers.append(nn.Linear(c_in, num_classes))
    return nn.Sequential(*layers)


def resnet18(input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    """torchvision's ResNet-18 (random init, no download) with a 3x3 stem for small images."""
    from torchvision.models import resnet18 as tv_resnet18

    if len(input_shape) != 3:
        raise ModelError(f"model resnet18 expects images (C, H, W); got {tuple(input_shape)}")
    m = tv_resnet18(weights=None, num_classes=num_classes)
    m.conv1 = nn.Conv2d(input_shape[0], 64, 3, stride=1, padding=1, bias=False)
    m.maxpool = nn.Identity()
    return m


MODELS: dict[str, Callable[..., nn.Module]] = {"mlp": mlp, "cnn": cnn, "resnet18": resnet18}


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
            raise ModelError(f"model.name={name!r}: cannot import ({exc}); expected 'package.module:function'") from None
    raise ModelError(f"model.name: unknown model {name!r}; valid: {', '.join(sorted(MODELS))} or 'package.module:function'")


def build_model(name: str, input_shape: tuple[int, ...], num_classes: int, kwargs: dict[str, Any] | None = None) -> nn.Module:
    """Build a model; bad kwargs or a builder that fails raise ModelError naming the model."""
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
