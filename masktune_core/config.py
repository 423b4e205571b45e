"""RunConfig: every option of a run, its validation, and the per-dataset recipe defaults.

Values arrive as strings (CLI, forms) or JSON types (``--config`` files); ``RunConfig.from_dict`` coerces
and validates them, raising ``ConfigError`` naming the field, so no bad value reaches a run.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
from collections.abc import Callable
from dataclasses import dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

from masktune_core.errors import ConfigError
from masktune_core.recipes import RECIPE_KEYS

if TYPE_CHECKING:  # the data registry imports torch; config stays import-light
    from masktune_core.data.base import DataOptions, DatasetInfo

OPTIMIZERS = ("sgd", "adam")
SCHEDULES = ("cosine", "step", "none")
CAM_METHODS = ("xgradcam", "gradcam", "gradcam++", "layercam", "eigencam")
THRESHOLD_RULES = ("mean+2std", "topk")
FILLS = ("black", "mean", "blur", "swap", "transplant")
SELECTIONS = ("val_accuracy", "worst_group")
FINETUNE_SELECTIONS = ("val", "none")
FINETUNE_STARTS = ("best", "last")
DEVICES = ("auto", "cpu", "cuda")
BAD_IMAGE_POLICIES = ("skip", "fail")
SQUARE_POSITIONS = ("top-left", "top-right", "bottom-left", "bottom-right")

Choices = tuple[str, ...] | Callable[[], tuple[str, ...]]

MAX_FINETUNE_CANDIDATES = 6


def _dataset_names() -> tuple[str, ...]:
    from masktune_core.data import dataset_names

    return tuple(dataset_names())


def _backbone_names() -> tuple[str, ...]:
    from masktune_core.models import MODELS

    return tuple(MODELS)


def option(default: Any, help: str, *, choices: Choices | None = None) -> Any:
    """A RunConfig field with its one line of help and, where it has them, its choices (a tuple, or a
    function returning one for registries that import torch), so the CLI, the form and the validation
    all read one list."""
    return dataclasses.field(default=default, metadata={"help": help, "choices": choices})


@dataclass
class RunConfig:
    """One experiment. ``None`` means "use the dataset's recipe" until ``resolved()`` fills it in."""

    dataset: str = option("biased-digits", "dataset to train on", choices=_dataset_names)
    backbone: str | None = option(None, "network architecture", choices=_backbone_names)
    data_dir: str | None = option(None, "folder holding the dataset's files (folder datasets, torchvision)")
    image_size: int | None = option(None, "side of the square input images, in pixels")
    download: bool = option(False, "allow torchvision datasets to download into --data-dir")
    pretrained: str | None = option(None, "local file of pretrained backbone weights (state_dict)")
    # ERM
    epochs: int | None = option(None, "most ERM training epochs (early stopping may end sooner)")
    patience: int | None = option(
        None, "stop ERM after this many epochs without a better val score (0: never stop early)"
    )
    batch_size: int | None = option(None, "images per training and prediction batch")
    optimizer: str | None = option(None, "optimizer for ERM and the finetune", choices=OPTIMIZERS)
    lr: float | None = option(None, "ERM learning rate")
    momentum: float = option(0.9, "SGD momentum (SGD only)")
    weight_decay: float = option(5e-4, "L2 weight decay")
    schedule: str = option("cosine", "ERM learning-rate schedule", choices=SCHEDULES)
    selection: str = option(
        "val_accuracy",
        "which ERM epoch to keep, by its val score (worst_group needs groups)",
        choices=SELECTIONS,
    )
    # MaskTune
    finetune_lr: float | None = option(
        None, "learning rate of the masked finetune epoch (given alone: the only candidate)"
    )
    finetune_lrs: tuple[float, ...] | None = option(
        None, "finetune candidates' learning rates, comma-separated; val chooses among them"
    )
    finetune_fills: tuple[str, ...] | None = option(
        None,
        f"fills the finetune candidates use, comma-separated, from {', '.join(FILLS)} "
        "(--fill given alone: the only one)",
    )
    finetune_epochs: int | None = option(None, "epochs of each masked finetune (1 is the method)")
    finetune_checks: int | None = option(
        None, "val checks per finetune epoch; each candidate keeps its best check (with selection val)"
    )
    finetune_selection: str | None = option(
        None,
        "val: keep the finetune candidate best on val, or ERM when none beats it; none: keep the first",
        choices=FINETUNE_SELECTIONS,
    )
    finetune_start: str | None = option(
        None,
        "where the first finetune's candidates start, one or both joined by a comma (each lr and fill is "
        "tried from each): best, the kept ERM checkpoint with a fresh optimizer; last, ERM's last epoch "
        "with its optimizer state (the reference code)",
    )
    iterations: int | None = option(None, "rounds of mask + finetune (1 is the method; up to 10)")
    cam_method: str = option("xgradcam", "saliency method for the masks", choices=CAM_METHODS)
    threshold_rule: str | None = option(None, "which heatmap pixels to mask", choices=THRESHOLD_RULES)
    topk_percent: float = option(10.0, "percent of pixels the topk rule masks")
    mask_dilation: int = option(0, "grow every mask by this many pixels on each side (0: as thresholded)")
    fill: str = option("black", "what masked pixels become", choices=FILLS)
    randmask: bool = option(False, "also finetune on random masks of the same area (the control)")
    # dataset protocol
    val_fraction: float | None = option(
        None, "share of train held out as val (datasets without their own val split)"
    )
    bad_images: str = option(
        "skip", "an unreadable image file is skipped or stops the run", choices=BAD_IMAGE_POLICIES
    )
    square_size: int = option(5, "side of the coloured square in pixels (biased datasets)")
    square_color: tuple[int, int, int] = option(
        (255, 0, 0), "colour of the square as R,G,B (biased datasets)"
    )
    square_position: str = option(
        "top-left", "corner of the square (biased datasets)", choices=SQUARE_POSITIONS
    )
    bias_ratio: float = option(0.99, "share of class-0 train/val images with the square (biased datasets)")
    train_copies: int | None = option(None, "random-affine copies of each training image (digits datasets)")
    # execution
    seed: int = option(0, "seed of the split, the initial weights, the batches and the squares")
    device: str = option("auto", "where to train (auto: cuda if available)", choices=DEVICES)
    nproc: int = option(1, "processes to run on through torchrun (DDP); batch_size is split among them")
    name: str | None = option(None, "a readable name for the run (part of its id)")
    study: str | None = option(None, "the id shared by the runs of one seed study (run --seeds sets it)")

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
        for name in ("finetune_lrs", "finetune_fills"):
            if getattr(self, name) is not None:
                values[name] = list(getattr(self, name))
        return values

    # ------------------------------------------------------------------ recipe
    def resolved(self) -> RunConfig:
        """A copy with every ``None`` recipe option taken from the recipe of the dataset, backbone and
        regime (masktune_core.recipes). A finetune lr given alone is the only finetune candidate."""
        from masktune_core.recipes import recipe_for

        recipe = recipe_for(self.dataset, self.backbone, self.pretrained).as_dict()
        updates = {key: recipe[key] for key in RECIPE_KEYS if getattr(self, key) is None and key in recipe}
        if self.finetune_lrs is None and (self.finetune_lr is not None or "finetune_lrs" not in updates):
            updates["finetune_lrs"] = (self.finetune_lr or updates["finetune_lr"],)
        # Likewise a fill other than the default, given alone, is the only fill the finetune uses.
        if self.finetune_fills is None and (self.fill != _default("fill") or "finetune_fills" not in updates):
            updates["finetune_fills"] = (self.fill,)
        config = dataclasses.replace(self, **updates)
        config.validate()
        return config

    def finetune_starts(self) -> tuple[str, ...]:
        """``finetune_start`` as a tuple (empty while unresolved)."""
        text = self.finetune_start or ""
        return tuple(part.strip() for part in text.split(",") if part.strip())

    def data_options(self) -> DataOptions:
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
            # Only the datasets that make copies read this; their recipe always sets it.
            train_copies=self.train_copies or 0,
        )

    # ------------------------------------------------------------------ validation
    def validate(self) -> None:
        from masktune_core.data import get_dataset_info

        info = get_dataset_info(self.dataset)  # raises ConfigError("dataset", ...) naming the choices
        for f in fields(self):
            if f.metadata.get("choices") is not None:
                check_choice(f.name, getattr(self, f.name))
        _positive_int("epochs", self.epochs)
        _positive_int("patience", self.patience, lower=0, upper=1000)
        _positive_int("batch_size", self.batch_size)
        _positive_int("iterations", self.iterations, upper=10)
        _positive_int("seed", self.seed, lower=0, upper=2**31 - 1)
        _positive_int("nproc", self.nproc, upper=1024)
        if self.batch_size is not None and self.batch_size % self.nproc:
            raise ConfigError(
                "batch_size", f"{self.batch_size} does not split evenly among nproc={self.nproc} processes"
            )
        _positive_float("lr", self.lr)
        _positive_float("finetune_lr", self.finetune_lr)
        if self.finetune_lrs is not None:
            if not 1 <= len(self.finetune_lrs) <= MAX_FINETUNE_CANDIDATES:
                raise ConfigError(
                    "finetune_lrs", f"needs 1 to {MAX_FINETUNE_CANDIDATES} learning rates, e.g. 0.001,0.0001"
                )
            for lr in self.finetune_lrs:
                _positive_float("finetune_lrs", lr)
        if self.finetune_fills is not None:
            if not self.finetune_fills or len(set(self.finetune_fills)) != len(self.finetune_fills):
                raise ConfigError("finetune_fills", "needs one or more different fills, e.g. black,swap")
            for fill in self.finetune_fills:
                if fill not in FILLS:
                    raise ConfigError(
                        "finetune_fills", f"unknown value {fill!r}; choose from {', '.join(FILLS)}"
                    )
        candidates = (
            len(self.finetune_lrs or ())
            * len(self.finetune_fills or ())
            * max(1, len(self.finetune_starts()))
        )
        if candidates > MAX_FINETUNE_CANDIDATES:
            raise ConfigError(
                "finetune_lrs",
                f"{candidates} finetune candidates (learning rates x fills x starts); "
                f"at most {MAX_FINETUNE_CANDIDATES}",
            )
        starts = self.finetune_starts()
        if self.finetune_start is not None and (
            not starts or len(set(starts)) != len(starts) or not set(starts) <= set(FINETUNE_STARTS)
        ):
            raise ConfigError(
                "finetune_start",
                f"expected one or both of {', '.join(FINETUNE_STARTS)}, comma-separated, "
                f"got {self.finetune_start!r}",
            )
        _positive_int("finetune_epochs", self.finetune_epochs, upper=20)
        _positive_int("finetune_checks", self.finetune_checks, upper=20)
        _in_range("momentum", self.momentum, 0.0, 0.999)
        _in_range("weight_decay", self.weight_decay, 0.0, 1.0)
        _in_range("topk_percent", self.topk_percent, 0.1, 99.9)
        _positive_int("mask_dilation", self.mask_dilation, lower=0, upper=16)
        check_data_options(self.data_options(), info)
        if self.data_dir is not None and not self.download and not Path(self.data_dir).is_dir():
            raise ConfigError(
                "data_dir", f"{self.data_dir} is not a directory (pass --download to fetch data)"
            )
        if self.pretrained is not None and not Path(self.pretrained).is_file():
            raise ConfigError("pretrained", f"{self.pretrained} is not a file")
        if self.name is not None and (len(self.name) > 80 or not self.name.strip()):
            raise ConfigError("name", "must be 1 to 80 characters")
        if self.study is not None and not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}", self.study):
            raise ConfigError(
                "study", "use 1 to 128 letters, digits, '.', '_' or '-', starting with one of the first two"
            )
        self._refuse_ignored(info)

    def _refuse_ignored(self, info: DatasetInfo) -> None:
        """An option this dataset or optimizer would silently ignore is an error, so no run claims a
        setting it never used. Options left at their default are not "given"."""
        options = self.data_options()
        if self.selection == "worst_group" and not info.has_groups(options):
            raise ConfigError("selection", f"worst_group needs group labels, and {self.dataset} has none")
        if self.train_copies is not None and not info.train_copies:
            raise ConfigError(
                "train_copies", f"{self.dataset} makes no affine copies (only the digits sets do)"
            )
        if self.val_fraction is not None and info.has_own_val(options):
            raise ConfigError(
                "val_fraction", f"{self.dataset} brings its own val split, so nothing is held out"
            )
        if not info.biased:
            for name in ("square_size", "square_color", "square_position", "bias_ratio"):
                if getattr(self, name) != _default(name):
                    raise ConfigError(
                        name, f"{self.dataset} has no coloured square (only the biased-* sets do)"
                    )
        if self.optimizer == "adam" and self.momentum != _default("momentum"):
            raise ConfigError("momentum", "Adam takes no momentum (it applies to --optimizer sgd only)")


def check_data_options(options: DataOptions, info: DatasetInfo) -> None:
    """ConfigError naming the first invalid data option of the dataset ``info`` describes.

    ``RunConfig.validate`` and ``build_dataset``, the data registry's entry point, both call it, so no
    builder re-checks an option. The square must fit in half the image: ``image_size``, or else the
    dataset's recipe size.
    """
    _positive_int("image_size", options.image_size, lower=8, upper=1024)
    _positive_int("train_copies", options.train_copies, lower=0, upper=64)
    if options.val_fraction is not None:
        _in_range("val_fraction", options.val_fraction, 0.01, 0.5)
    check_choice("bad_images", options.bad_images)
    if not info.biased:
        return
    size = options.image_size or info.recipe.image_size
    _positive_int("square_size", options.square_size, upper=None if size is None else size // 2)
    _in_range("bias_ratio", options.bias_ratio, 0.5, 1.0)
    color = options.square_color
    if not (
        isinstance(color, tuple | list)
        and len(color) == 3
        and all(isinstance(c, int) and not isinstance(c, bool) and 0 <= c <= 255 for c in color)
    ):
        raise ConfigError("square_color", f"needs three integers from 0 to 255, e.g. 255,0,0; got {color!r}")
    check_choice("square_position", options.square_position)


def _default(name: str) -> Any:
    return RunConfig.__dataclass_fields__[name].default


def option_choices(name: str) -> tuple[str, ...] | None:
    """The allowed values of RunConfig field ``name``, or None for a free value."""
    choices = RunConfig.__dataclass_fields__[name].metadata.get("choices")
    return choices() if callable(choices) else choices


def check_choice(name: str, value: str | None) -> None:
    """ConfigError naming ``name`` unless ``value`` is None or one of the field's choices; the one check
    every module's public entry point uses (cam methods, threshold rules, fills, ...)."""
    choices = option_choices(name) or ()
    if value is not None and value not in choices:
        raise ConfigError(name, f"unknown value {value!r}; choose one of {', '.join(choices)}")


def option_help(name: str) -> str:
    """One line for ``--help`` and the form: what the field does, its default and its choices."""
    f = RunConfig.__dataclass_fields__[name]
    if f.default is None:
        default = "dataset recipe" if name in RECIPE_KEYS else "none"
        if name == "val_fraction":
            default = "the dataset's own"
    elif isinstance(f.default, bool):
        default = "on" if f.default else "off"
    elif isinstance(f.default, tuple):
        default = ",".join(str(v) for v in f.default)
    else:
        default = str(f.default)
    choices = option_choices(name)
    text = f"{f.metadata['help']} (default: {default}"
    return text + (f"; choices: {', '.join(choices)})" if choices else ")")


# ---------------------------------------------------------------------- coercion helpers
def _coerce(name: str, annotation: str, value: Any) -> Any:
    kind = str(annotation)
    if name == "finetune_lrs":
        return _parse_numbers(name, value)
    if name == "finetune_fills":
        parts = value.split(",") if isinstance(value, str) else value
        return tuple(str(p).strip() for p in parts)
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


def _parse_numbers(name: str, value: Any) -> tuple[float, ...]:
    parts = value.split(",") if isinstance(value, str) else value
    try:
        numbers = tuple(float(str(p).strip()) for p in parts)
    except (TypeError, ValueError):
        raise ConfigError(name, f"needs comma-separated numbers, e.g. 0.001,0.0001; got {value!r}") from None
    if not all(math.isfinite(n) for n in numbers):
        raise ConfigError(name, f"needs finite numbers, got {value!r}")
    return numbers


def _positive_float(name: str, value: float | None) -> None:
    if value is not None and not value > 0:
        raise ConfigError(name, f"must be greater than 0, got {value}")


def _in_range(name: str, value: float, lower: float, upper: float) -> None:
    if not lower <= value <= upper:
        raise ConfigError(name, f"must be from {lower} to {upper}, got {value}")


__all__ = ["RunConfig"]
