"""The ``training_config.yaml`` schema (pydantic v2), load/save, and dotted overrides.

Every field carries its unit in its description. Unknown keys are rejected with the valid names,
and every problem in a file is reported at once with its dotted path (``ConfigError.problems``).
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Any, Literal, Optional

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from trainkit._io import write_text_atomic
from trainkit.errors import ConfigError

__all__ = [
    "TrainkitConfig",
    "load_config",
    "save_config",
    "config_hash",
    "apply_overrides",
    "parse_override",
    "validate_config_dict",
    "template_path",
]


TABLE_SOURCES = ("csv", "parquet")  # the data sources that read a table file


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)


class DataConfig(_Section):
    source: str = Field(
        "digits", description="digits | image_folder | mnist | fashion_mnist | cifar10 | npz | package.module:function"
    )
    root: Optional[str] = Field(None, description="folder or file the source reads (path); unused by digits")
    val_fraction: float = Field(0.15, gt=0, lt=1, description="share of samples for validation (fraction 0-1)")
    test_fraction: float = Field(
        0.15, gt=0, lt=1, description="share of samples for the quarantined test split (fraction 0-1)"
    )
    split_seed: int = Field(0, ge=0, description="seed of the stratified split (integer)")
    batch_size: int = Field(64, ge=1, description="samples per optimizer step per process (count)")
    workers: int = Field(0, ge=0, description="DataLoader worker processes for streamed (folder) data (count)")
    sampler: Literal["shuffle", "balanced"] = Field(
        "shuffle",
        description="shuffle = each training sample once per epoch; "
        "balanced = draw with replacement, every class equally often",
    )
    augment: Literal["none", "flip_crop", "crop", "noise"] = Field("none", description="training-time augmentation")
    image_size: Optional[int] = Field(
        None, ge=4, description="resize folder images to this side (pixels); None keeps the first image's size"
    )
    subset: Optional[int] = Field(None, ge=2, description="use only this many training samples (count); None = all")
    label: Optional[str] = Field(
        None, description="csv / parquet: the column to predict (strings or integers; its values are the class names)"
    )
    features: Optional[list[str]] = Field(
        None,
        description="csv / parquet: the columns to use (default: all but the label and data.drop); "
        "naming an ID or free-text column here puts it back",
    )
    drop: list[str] = Field(
        default_factory=list, description="csv / parquet: columns left out (IDs, leaky columns, ...)"
    )
    categorical: Optional[list[str]] = Field(
        None, description="csv / parquet: columns encoded as categories whatever their inferred kind"
    )
    drop_unlabelled: bool = Field(
        False, description="csv / parquet: leave out rows whose label is missing (default: a clear error)"
    )
    exclude: Optional[str] = Field(
        None,
        description='JSON file {"indices": [...]} of source sample indices left out of training '
        "(path; relative paths resolve against the run folder); Phase 3 writes one for label issues and leaks",
    )

    @model_validator(mode="after")
    def _fractions(self) -> "DataConfig":
        if self.val_fraction + self.test_fraction >= 0.9:
            raise ValueError("val_fraction + test_fraction must leave at least 10% for training")
        return self


class ModelConfig(_Section):
    name: str = Field(
        "mlp",
        description="tabm (tables; the default of a csv/parquet source with no model section) | mlp (vectors) | cnn1d "
        "(signals C, L) | cnn | resnet18 (images C, H, W) | package.module:function",
    )
    kwargs: dict[str, Any] = Field(default_factory=dict, description="keyword arguments for the model builder")
    init: Literal["default", "kaiming"] = Field(
        "default",
        description="default = the builder's own init; kaiming = "
        "He-normal weights and zero biases for every linear/conv layer (revives dead units)",
    )


class OptimizerConfig(_Section):
    name: Literal["sgd", "adam", "adamw"] = Field("adam", description="optimizer")
    lr: float = Field(1e-3, ge=0, description="peak learning rate (per step)")
    weight_decay: float = Field(0.0, ge=0, description="L2 / decoupled weight decay (coefficient)")
    momentum: float = Field(0.9, ge=0, lt=1, description="SGD momentum (coefficient)")
    nesterov: bool = Field(False, description="SGD Nesterov momentum")
    betas: tuple[float, float] = Field((0.9, 0.999), description="Adam/AdamW beta1, beta2 (coefficients)")


class ScheduleConfig(_Section):
    name: Literal["constant", "step", "cosine", "one_cycle"] = Field("constant", description="learning-rate schedule")
    warmup_epochs: float = Field(0.0, ge=0, description="linear warmup from 0 (epochs, fractional allowed)")
    step_epochs: int = Field(10, ge=1, description="step schedule: epochs between decays (epochs)")
    gamma: float = Field(0.1, gt=0, le=1, description="step schedule: decay factor per step (ratio)")
    min_lr_ratio: float = Field(0.0, ge=0, le=1, description="cosine/one-cycle: final LR as a share of peak (ratio)")


class TrainingConfig(_Section):
    epochs: int = Field(20, ge=1, description="maximum epochs (count)")
    patience: Optional[int] = Field(
        5, ge=1, description="early stopping: epochs without improvement (count); None disables"
    )
    min_delta: float = Field(0.0, ge=0, description="early stopping: smallest improvement that counts (metric units)")
    grad_clip: Optional[float] = Field(
        None, gt=0, description="clip the global gradient norm to this value (L2 norm); None disables"
    )
    accumulation: int = Field(1, ge=1, description="micro-batches per optimizer step (count)")
    precision: Literal["auto", "fp32", "bf16", "fp16"] = Field(
        "auto", description="auto = bf16 on CUDA when supported, fp32 on CPU"
    )
    device: str = Field("auto", description="auto | cpu | cuda | cuda:N")
    seed: int = Field(0, ge=0, description="seed for python, numpy, torch and workers (integer)")
    deterministic: bool = Field(True, description="deterministic algorithms, cuDNN flags, CUBLAS workspace")
    label_smoothing: float = Field(0.0, ge=0, lt=1, description="cross-entropy label smoothing (fraction 0-1)")
    regression_loss: Literal["mse", "huber"] = Field(
        "mse",
        description="a regression's training loss on the standardized "
        "label: mse, or huber (δ 1 standard deviation: robust to outliers)",
    )
    class_weighting: Literal["none", "balanced"] = Field(
        "none", description="balanced = cross-entropy weights N / (K * n_class) from the training split's class counts"
    )
    nan_guard: bool = Field(
        True, description="stop where loss or gradient becomes non-finite (the step that went bad is reported)"
    )
    guard_every: int = Field(
        16,
        ge=1,
        le=10000,
        description="on CUDA, steps between the NaN/Inf guard's host reads (count); the CPU checks every step",
    )
    compile: bool = Field(
        False,
        description="torch.compile the model for training (needs a C++ compiler on the CPU; the "
        "first epoch pays the compile time)",
    )


class TargetConfig(_Section):
    metric: Literal["accuracy", "balanced_accuracy", "macro_f1", "roc_auc", "rmse", "mae", "r2"] = Field(
        "accuracy",
        description="validation metric every decision compares (early stopping, Phase 2 A/B, Phase 4 adoption, "
        "the production gate's target, the test interval); accuracy is always reported beside a class metric. roc_auc "
        "is "
        "for two classes only. rmse | mae | r2 make the run a regression (the label is a number; rmse and mae are "
        "lower "
        "is better, in the label's units)",
    )
    value: float = Field(
        0.95,
        description="target value of the validation metric (a fraction 0-1 for accuracy, "
        "balanced_accuracy, macro_f1, roc_auc and r2; the label's units for rmse and mae)",
    )

    @model_validator(mode="after")
    def _value_suits_the_metric(self) -> "TargetConfig":
        if self.metric in ("rmse", "mae"):
            if "value" not in self.model_fields_set:
                raise ValueError(
                    f"target.value: a {self.metric} target needs its value, in the label's units (the error "
                    "to reach, e.g. value: 2.5); there is no default for an error"
                )
            if self.value <= 0:
                raise ValueError(
                    f"target.value: {self.metric} is an error (lower is better, 0 is perfect); give a "
                    f"positive value in the label's units, got {self.value}"
                )
        elif not (self.value <= 1 and (self.value >= 0 or self.metric == "r2")):
            raise ValueError(
                f"target.value: {self.metric} is a fraction; give a value of at most 1 "
                f"({'r2 may be negative' if self.metric == 'r2' else 'between 0 and 1'}), got {self.value}"
            )
        return self

    @property
    def regression(self) -> bool:
        """Whether this target makes the run a regression (rmse, mae or r2)."""
        return self.metric in ("rmse", "mae", "r2")


class BudgetConfig(_Section):
    total_hours: float = Field(12.0, gt=0, description="whole-pipeline time budget (hours)")
    max_optimization_iterations: int = Field(3, ge=1, description="Phase 4 iterations at most (count)")
    max_baseline_restarts: int = Field(2, ge=0, description="Phase 2 restarts after a failed baseline (count)")
    clear_gain_points: float = Field(5.0, ge=0, description="Phase 3 A: expected gain above this (percentage points)")
    marginal_gain_points: float = Field(
        3.0, ge=0, description="Phase 3 B: expected gain below this (percentage points)"
    )
    diminishing_points: float = Field(
        2.0, ge=0, description="Phase 4 D: two iterations in a row under this gain (percentage points)"
    )
    gpu_util_block: float = Field(
        40.0, ge=0, le=100, description="post_baseline: GPU utilisation below this blocks (percent)"
    )
    gpu_util_warn: float = Field(
        60.0, ge=0, le=100, description="post_baseline: GPU utilisation below this warns (percent)"
    )


class FinalConfig(_Section):
    epochs: int = Field(100, ge=1, description="Phase 5 final training: maximum epochs (count)")
    patience: Optional[int] = Field(10, ge=1, description="Phase 5 final training: early-stopping patience (epochs)")
    per_class_floor: float = Field(
        0.5, ge=0, le=1, description="production gate: lowest acceptable per-class recall on test (fraction 0-1)"
    )
    noise_std: float = Field(
        0.1, ge=0, description="robustness smoke test: Gaussian noise added to normalized inputs (standard deviations)"
    )
    robustness_tolerance: float = Field(
        0.05, ge=0, le=1, description="robustness smoke test: largest acceptable accuracy drop (fraction 0-1)"
    )
    latency_budget_ms: Optional[float] = Field(
        None,
        gt=0,
        description="production gate: p95 latency at batch 1 of the ONNX model must be under this (milliseconds); "
        "None = no budget",
    )
    parity_atol: float = Field(
        1e-4, gt=0, description="export parity: largest acceptable max-abs difference of logits (fp32)"
    )
    bootstrap: int = Field(
        1000, ge=100, description="bootstrap resamples for the test-accuracy confidence interval (count)"
    )


class TrackingConfig(_Section):
    mlflow: Optional[bool] = Field(
        None,
        description="true = log the run to MLflow (needs pip install 'trainkit[mlflow]'); "
        "None = on when uri is set; false = off",
    )
    uri: Optional[str] = Field(
        None,
        description="MLflow tracking URI: http://host:5000, sqlite:///path.db, postgresql://..., "
        "file:///path/mlruns; None = the local store mlflow.db in the runs folder",
    )
    experiment: str = Field("trainkit", min_length=1, description="MLflow experiment the run is logged to (name)")
    registered_model: Optional[str] = Field(
        None, description="model registry name of the signed final model; None = the experiment name"
    )
    live_interval_s: float = Field(
        30.0, ge=1, description="while a phase trains, seconds between pushes of its metrics (seconds)"
    )

    @property
    def enabled(self) -> bool:
        return bool(self.mlflow) or (self.mlflow is None and bool(self.uri))

    @model_validator(mode="after")
    def _uri_has_a_scheme(self) -> "TrackingConfig":
        if self.uri is not None and not re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]*://|^databricks", self.uri.strip()):
            raise ValueError(
                f"tracking.uri {self.uri!r} needs a scheme: http://host:5000, sqlite:///path/mlflow.db, "
                "postgresql://…, or file:///absolute/path/mlruns (a bare path would be read relative to "
                "wherever trainkit runs)"
            )
        return self


class TrainkitConfig(_Section):
    """The whole training_config.yaml."""

    data: DataConfig = Field(default_factory=DataConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    optimizer: OptimizerConfig = Field(default_factory=OptimizerConfig)
    schedule: ScheduleConfig = Field(default_factory=ScheduleConfig)
    training: TrainingConfig = Field(default_factory=TrainingConfig)
    target: TargetConfig = Field(default_factory=TargetConfig)
    budget: BudgetConfig = Field(default_factory=BudgetConfig)
    final: FinalConfig = Field(default_factory=FinalConfig)
    tracking: TrackingConfig = Field(default_factory=TrackingConfig)

    @model_validator(mode="after")
    def _a_regression_has_no_classes(self) -> "TrainkitConfig":
        if self.target.regression:
            for field, value, default in (
                ("training.class_weighting", self.training.class_weighting, "none"),
                ("data.sampler", self.data.sampler, "shuffle"),
            ):
                if value != default:
                    raise ValueError(
                        f"{field}: {value!r} balances classes, and target.metric {self.target.metric} makes "
                        f"this run a regression (no classes); set {field}: {default}"
                    )
        return self

    @model_validator(mode="before")
    @classmethod
    def _a_table_gets_tabm(cls, raw: Any) -> Any:
        """A table (``data.source`` csv or parquet) whose config has no ``model`` section gets
        TabM, the tabular network that holds its own against boosted trees; any other source, mlp."""
        if (
            isinstance(raw, dict)
            and raw.get("model") is None
            and isinstance(raw.get("data"), dict)
            and raw["data"].get("source") in TABLE_SOURCES
        ):
            return {**raw, "model": {"name": "tabm"}}
        return raw


def _model_at(loc: tuple) -> type[BaseModel] | None:
    """The pydantic model class that owns the field at ``loc`` (None if not a model)."""
    model: Any = TrainkitConfig
    for part in loc:
        field = model.model_fields.get(part) if isinstance(part, str) else None
        if field is None:
            return None
        ann = field.annotation
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            model = ann
        else:
            return None
    return model


def _problems_from(err: ValidationError) -> list[tuple[str, str]]:
    problems = []
    for e in err.errors():
        loc = tuple(e["loc"])
        path = ".".join(str(p) for p in loc) or "(top level)"
        if e["type"] == "extra_forbidden":
            owner = _model_at(loc[:-1])
            valid = sorted(owner.model_fields) if owner else []
            problems.append((path, f"unknown key '{loc[-1]}'; valid keys here: {', '.join(valid)}"))
        else:
            got = e.get("input")
            shown = "" if isinstance(got, dict) else f" (got {got!r})"
            problems.append((path, e["msg"] + shown))
    return problems


def validate_config_dict(raw: Any, source: str = "config") -> TrainkitConfig:
    """Validate a plain dict; raise ConfigError listing every problem with its dotted path."""
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError([("(top level)", f"expected a mapping of sections, got {type(raw).__name__}")], source)
    try:
        return TrainkitConfig.model_validate(raw)
    except ValidationError as err:
        raise ConfigError(_problems_from(err), source) from None


MAX_YAML_BYTES = 1 << 20  # a config or approvals file larger than 1 MiB is refused
MAX_YAML_VALUES = 100_000  # ... and so is one whose aliases expand to more values than this


def load_yaml_file(path: str | Path, what: str) -> Any:
    """Read a small YAML file safely: a regular UTF-8 text file under 1 MiB whose aliases do not
    expand past ``MAX_YAML_VALUES`` values (an alias bomb otherwise hangs whatever walks it).
    Every problem is a ConfigError naming the file."""
    path = Path(path)
    if path.is_dir():
        raise ConfigError([(what, f"{path} is a directory; pass a YAML file")], str(path))
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ConfigError([(what, f"cannot read {path}: {exc.strerror or exc}")], str(path)) from None
    if len(data) > MAX_YAML_BYTES:
        raise ConfigError(
            [(what, f"{path} is {len(data)} bytes; a {what} file must be under {MAX_YAML_BYTES} bytes")], str(path)
        )
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise ConfigError(
            [(what, f"{path} is not UTF-8 text (a binary or UTF-16 file?); save it as UTF-8 YAML")], str(path)
        ) from None
    if "\x00" in text:
        raise ConfigError([(what, f"{path} contains NUL bytes: not a text file")], str(path))
    return safe_yaml(text, str(path), what)


def safe_yaml(text: str, source: str, what: str = "(yaml)") -> Any:
    """``yaml.safe_load`` with the alias-expansion bound; ConfigError on bad YAML."""
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError([(what, f"not valid YAML: {exc}")], source) from None
    if _expanded_size(value, MAX_YAML_VALUES) > MAX_YAML_VALUES:
        raise ConfigError(
            [
                (
                    what,
                    f"its aliases expand to more than {MAX_YAML_VALUES} values (a YAML alias bomb?); "
                    "write the values out",
                )
            ],
            source,
        )
    return value


def _expanded_size(value: Any, budget: int) -> int:
    """How many values ``value`` holds once shared (aliased) parts are counted each time they are
    referenced; stops counting past ``budget``."""
    count, stack = 0, [value]
    while stack and count <= budget:
        v = stack.pop()
        count += 1
        if isinstance(v, dict):
            stack.extend(v.keys())
            stack.extend(v.values())
        elif isinstance(v, (list, tuple)):
            stack.extend(v)
    return count


def parse_override(item: str) -> tuple[str, Any]:
    """Split ``"optimizer.lr=3e-4"`` into a dotted key and a YAML-parsed value."""
    if "=" not in item:
        raise ConfigError([(item, "an override must look like section.key=value, e.g. optimizer.lr=3e-4")], "--set")
    key, _, text = item.partition("=")
    key = key.strip()
    try:
        value = safe_yaml(text, "--set", key) if text.strip() else ""
    except ConfigError as exc:
        if "alias" in str(exc):
            raise
        value = text
    return key, value


def apply_overrides(raw: dict, overrides: list[str] | dict[str, Any] | None) -> dict:
    """Return a copy of ``raw`` with dotted overrides set (validation happens afterwards)."""
    out = json.loads(json.dumps(raw or {}, default=list))
    if not overrides:
        return out
    items = overrides.items() if isinstance(overrides, dict) else (parse_override(o) for o in overrides)
    problems = []
    for key, value in items:
        parts = key.split(".")
        if len(parts) < 2:
            problems.append((key, f"expected section.key; sections: {', '.join(TrainkitConfig.model_fields)}"))
            continue
        node = out
        for part in parts[:-1]:
            if not isinstance(node.get(part, {}), dict):
                problems.append((key, f"'{part}' is not a section"))
                break
            node = node.setdefault(part, {})
        else:
            node[parts[-1]] = value
    if problems:
        raise ConfigError(problems, "--set")
    return out


def template_path() -> Path:
    """The shipped baseline template (configs/baseline_template.yaml, also package data)."""
    here = Path(__file__).resolve().parent
    for cand in (here / "configs" / "baseline_template.yaml", here.parent / "configs" / "baseline_template.yaml"):
        if cand.exists():
            return cand
    raise ConfigError([("config", "baseline_template.yaml not found in the installed package")], "template")


def load_config(
    path: str | Path | None = None,
    overrides: list[str] | dict[str, Any] | None = None,
    target: float | None = None,
) -> TrainkitConfig:
    """Load a YAML config (``None`` or ``""`` = the baseline template), apply overrides, validate."""
    path = Path(path) if path else template_path()
    if not path.exists():
        raise ConfigError([("config", f"file not found: {path}; pass an existing training_config.yaml")], str(path))
    raw = load_yaml_file(path, "config")
    if raw is not None and not isinstance(raw, dict):
        raise ConfigError([("(top level)", "expected a mapping of sections (data:, model:, ...)")], str(path))
    if not raw and not overrides and target is None:  # an empty file would silently train the built-in digits
        raise ConfigError(
            [
                (
                    "config",
                    "the file holds no settings; write at least a data: section (see "
                    "configs/baseline_template.yaml), or give no config at all for the built-in demo",
                )
            ],
            str(path),
        )
    raw = apply_overrides(raw or {}, overrides)
    if target is not None:
        raw = apply_overrides(raw, {"target.value": target})
    return validate_config_dict(raw, str(path))


def config_to_dict(cfg: TrainkitConfig) -> dict:
    """Plain JSON-compatible dict of a config."""
    return cfg.model_dump(mode="json")


def with_overrides(cfg: TrainkitConfig, patch: dict[str, Any]) -> TrainkitConfig:
    """A validated copy of ``cfg`` with dotted-key overrides (``{"optimizer.lr": 0.01}``) applied."""
    return validate_config_dict(apply_overrides(config_to_dict(cfg), patch), "config patch")


def get_dotted(d: dict, dotted: str) -> Any:
    """``d['a']['b']`` for ``'a.b'``; None when a part is missing."""
    for part in dotted.split("."):
        if not isinstance(d, dict) or part not in d:
            return None
        d = d[part]
    return d


def save_config(cfg: TrainkitConfig, path: str | Path) -> Path:
    """Write the config as YAML, atomically."""
    text = yaml.safe_dump(config_to_dict(cfg), sort_keys=False)
    return write_text_atomic(path, text)


NOT_HASHED = ("tracking",)  # where a run is logged does not change what it trains


def config_hash(cfg: TrainkitConfig) -> str:
    """sha256 of the canonical JSON of a config (key order does not matter), without the sections
    that do not change training (``tracking``): the same recipe has the same hash, tracked or not."""
    d = {k: v for k, v in config_to_dict(cfg).items() if k not in NOT_HASHED}
    canon = json.dumps(d, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canon.encode()).hexdigest()
