"""RunConfig: every option of a run, its validation, and the per-dataset recipe defaults.

Values arrive as strings (CLI, forms) or JSON types (``--config`` files); ``RunConfig.from_dict`` coerces
and validates them, raising ``ConfigError`` naming the field, so no bad value reaches a run.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from masktune_core.errors import ConfigError

OPTIMIZERS = ("sgd", "adam")
SCHEDULES = ("cosine", "step", "none")
CAM_METHODS = ("xgradcam", "gradcam", "gradcam++", "layercam", "eigencam")
THRESHOLD_RULES = ("mean+2std", "topk")
FILLS = ("black", "mean", "blur")
SELECTIONS = ("val_accuracy", "worst_group")
DEVICES = ("auto", "cpu", "cuda")
BAD_IMAGE_POLICIES = ("skip", "fail")
SQUARE_POSITIONS = ("top-left", "top-right", "bottom-left", "bottom-right")

# Options a dataset's recipe may set; anything the user leaves as None falls back to these.
RECIPE_KEYS = (
    "backbone",
    "epochs",
    "batch_size",
    "lr",
    "finetune_lr",
    "optimizer",
    "image_size",
    "threshold_rule",
    "train_copies",
)
GENERIC_RECIPE = {
    "backbone": "small-cnn",
    "epochs": 10,
    "batch_size": 128,
    "lr": 0.01,
    "finetune_lr": 0.001,
    "optimizer": "sgd",
    "threshold_rule": "mean+2std",
    "train_copies": 8,
}


@dataclass
class RunConfig:
    """One experiment. ``None`` means "use the dataset's recipe" until ``resolved()`` fills it in."""

    dataset: str = "biased-digits"
    backbone: str | None = None
    data_dir: str | None = None
    image_size: int | None = None
    download: bool = False
    pretrained: str | None = None
    # ERM
    epochs: int | None = None
    batch_size: int | None = None
    optimizer: str | None = None
    lr: float | None = None
    momentum: float = 0.9
    weight_decay: float = 5e-4
    schedule: str = "cosine"
    selection: str = "val_accuracy"
    # MaskTune
    finetune_lr: float | None = None
    iterations: int = 1
    cam_method: str = "xgradcam"
    threshold_rule: str | None = None
    topk_percent: float = 10.0
    fill: str = "black"
    randmask: bool = False
    # dataset protocol
    val_fraction: float | None = None  # None: the dataset's own default
    bad_images: str = "skip"
    square_size: int = 5
    square_color: tuple[int, int, int] = (255, 0, 0)
    square_position: str = "top-left"
    bias_ratio: float = 0.99
    train_copies: int | None = None
    # execution
    seed: int = 0
    device: str = "auto"
    nproc: int = 1  # processes (torchrun DDP); batch_size is the global batch, split among them
    name: str | None = None

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> RunConfig:
        """Build from loose values (strings or JSON types); unknown keys and bad values raise ConfigError."""
        known = {f.name: f for f in fields(cls)}
        kwargs: dict[str, Any] = {}
        for key, value in values.items():
            name = key.replace("-", "_")
            if name not in known:
                raise ConfigError(key, "unknown option")
            if value is None:
                continue
            kwargs[name] = _coerce(name, known[name].type, value)
        config = cls(**kwargs)
        config.validate()
        return config

    @classmethod
    def from_file(cls, path: str | Path) -> RunConfig:
        path = Path(path)
        try:
            values = json.loads(path.read_text())
        except OSError as err:
            raise ConfigError("config", f"cannot read {path}: {err.strerror}") from None
        except json.JSONDecodeError as err:
            raise ConfigError(
                "config", f"{path} is not valid JSON ({err.msg} at line {err.lineno})"
            ) from None
        if not isinstance(values, dict):
            raise ConfigError("config", f"{path} must hold a JSON object of options")
        return cls.from_dict(values)

    def to_dict(self) -> dict[str, Any]:
        values = dataclasses.asdict(self)
        values["square_color"] = list(self.square_color)
        return values

    # ------------------------------------------------------------------ recipe
    def resolved(self) -> RunConfig:
        """A copy with every ``None`` recipe option taken from the dataset's recipe."""
        from masktune_core.data import get_dataset_info

        recipe = {**GENERIC_RECIPE, **get_dataset_info(self.dataset).defaults}
        updates = {key: recipe[key] for key in RECIPE_KEYS if getattr(self, key) is None and key in recipe}
        config = dataclasses.replace(self, **updates)
        config.validate()
        return config

    def data_options(self):  # -> DataOptions (imported lazily to keep config import-light)
        from masktune_core.data import DataOptions

        return DataOptions(
            data_dir=self.data_dir,
            image_size=self.image_size,
            download=self.download,
            seed=self.seed,
            val_fraction=self.val_fraction,
            bad_images=self.bad_images,
            square_size=self.square_size,
            square_color=tuple(self.square_color),
            square_position=self.square_position,
            bias_ratio=self.bias_ratio,
            train_copies=GENERIC_RECIPE["train_copies"] if self.train_copies is None else self.train_copies,
        )

    # ------------------------------------------------------------------ validation
    def validate(self) -> None:
        from masktune_core.data import get_dataset_info
        from masktune_core.models import MODELS

        get_dataset_info(self.dataset)  # raises ConfigError("dataset", ...) naming the choices
        if self.backbone is not None and self.backbone not in MODELS:
            raise ConfigError(
                "backbone", f"unknown backbone {self.backbone!r}; choose one of {', '.join(MODELS)}"
            )
        _positive_int("epochs", self.epochs)
        _positive_int("batch_size", self.batch_size)
        _positive_int("iterations", self.iterations, upper=10)
        _positive_int("image_size", self.image_size, lower=8, upper=1024)
        _positive_int("square_size", self.square_size)
        _positive_int("train_copies", self.train_copies, lower=0, upper=64)
        _positive_int("seed", self.seed, lower=0, upper=2**31 - 1)
        _positive_int("nproc", self.nproc, upper=1024)
        if self.batch_size is not None and self.batch_size % self.nproc:
            raise ConfigError(
                "batch_size", f"{self.batch_size} does not split evenly among nproc={self.nproc} processes"
            )
        _positive_float("lr", self.lr)
        _positive_float("finetune_lr", self.finetune_lr)
        _in_range("momentum", self.momentum, 0.0, 0.999)
        _in_range("weight_decay", self.weight_decay, 0.0, 1.0)
        _in_range("topk_percent", self.topk_percent, 0.1, 99.9)
        if self.val_fraction is not None:
            _in_range("val_fraction", self.val_fraction, 0.01, 0.5)
        _in_range("bias_ratio", self.bias_ratio, 0.5, 1.0)
        _choice("optimizer", self.optimizer, OPTIMIZERS)
        _choice("schedule", self.schedule, SCHEDULES)
        _choice("selection", self.selection, SELECTIONS)
        _choice("cam_method", self.cam_method, CAM_METHODS)
        _choice("threshold_rule", self.threshold_rule, THRESHOLD_RULES)
        _choice("fill", self.fill, FILLS)
        _choice("device", self.device, DEVICES)
        _choice("bad_images", self.bad_images, BAD_IMAGE_POLICIES)
        _choice("square_position", self.square_position, SQUARE_POSITIONS)
        if len(self.square_color) != 3 or any(not 0 <= c <= 255 for c in self.square_color):
            raise ConfigError("square_color", "needs three integers from 0 to 255, e.g. 255,0,0")
        if self.data_dir is not None and not self.download and not Path(self.data_dir).is_dir():
            raise ConfigError(
                "data_dir", f"{self.data_dir} is not a directory (pass --download to fetch data)"
            )
        if self.pretrained is not None and not Path(self.pretrained).is_file():
            raise ConfigError("pretrained", f"{self.pretrained} is not a file")
        if self.name is not None and (len(self.name) > 80 or not self.name.strip()):
            raise ConfigError("name", "must be 1 to 80 characters")


# ---------------------------------------------------------------------- coercion helpers
def _coerce(name: str, annotation: str, value: Any) -> Any:
    kind = str(annotation)
    if "tuple" in kind:
        return _parse_color(name, value)
    if "bool" in kind:
        if isinstance(value, bool):
            return value
        text = str(value).strip().lower()
        if text in ("1", "true", "yes", "on"):
            return True
        if text in ("0", "false", "no", "off"):
            return False
        raise ConfigError(name, f"must be true or false, got {value!r}")
    if "int" in kind and "float" not in kind:
        if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
            raise ConfigError(name, f"must be a whole number, got {value!r}")
        try:
            return int(str(value).strip()) if not isinstance(value, float) else int(value)
        except ValueError:
            raise ConfigError(name, f"must be a whole number, got {value!r}") from None
    if "float" in kind:
        if isinstance(value, bool):
            raise ConfigError(name, f"must be a number, got {value!r}")
        try:
            number = float(str(value).strip())
        except ValueError:
            raise ConfigError(name, f"must be a number, got {value!r}") from None
        if not math.isfinite(number):
            raise ConfigError(name, f"must be a finite number, got {value!r}")
        return number
    if not isinstance(value, str):
        raise ConfigError(name, f"must be text, got {value!r}")
    return value.strip()


def _parse_color(name: str, value: Any) -> tuple[int, int, int]:
    parts = value.split(",") if isinstance(value, str) else value
    try:
        color = tuple(int(str(p).strip()) for p in parts)
    except (TypeError, ValueError):
        raise ConfigError(name, f"needs three integers from 0 to 255, e.g. 255,0,0; got {value!r}") from None
    if len(color) != 3:
        raise ConfigError(name, f"needs three integers from 0 to 255, e.g. 255,0,0; got {value!r}")
    return color  # type: ignore[return-value]


def _positive_int(name: str, value: int | None, *, lower: int = 1, upper: int | None = None) -> None:
    if value is None:
        return
    if value < lower or (upper is not None and value > upper):
        bound = f"from {lower} to {upper}" if upper is not None else f"at least {lower}"
        raise ConfigError(name, f"must be {bound}, got {value}")


def _positive_float(name: str, value: float | None) -> None:
    if value is not None and not value > 0:
        raise ConfigError(name, f"must be greater than 0, got {value}")


def _in_range(name: str, value: float, lower: float, upper: float) -> None:
    if not lower <= value <= upper:
        raise ConfigError(name, f"must be from {lower} to {upper}, got {value}")


def _choice(name: str, value: str | None, choices: tuple[str, ...]) -> None:
    if value is not None and value not in choices:
        raise ConfigError(name, f"unknown value {value!r}; choose one of {', '.join(choices)}")


__all__ = ["RunConfig"]
