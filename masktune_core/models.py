"""Backbone registry (``name -> ModelInfo``), the normalising ``Classifier`` wrapper and checkpoint I/O.

Every backbone maps raw pixels to logits through ``Classifier``, which normalises inside the model. Masks
and fills therefore act on raw [0, 1] pixels, and a black mask is exactly 0 before normalisation, as in the
method. Checkpoints are plain state_dicts, read with ``weights_only=True`` so that a file can never run code.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

from masktune_core.errors import CheckpointError, ConfigError
from masktune_core.runs import atomic_path

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ModelInfo:
    """One registered backbone.

    ``builder(num_classes, in_channels, image_size)`` returns the backbone with fresh weights;
    ``target_layer(backbone)`` is the module whose output activation the CAM uses;
    ``load_pretrained(backbone, path)``, where set, loads a local weight file into a fresh backbone;
    ``pooled_layer(backbone)``, where set, is a later module whose output is computed from the target
    activation by per-channel max and average pooling only. Such pooling is positively homogeneous, so
    by Euler's theorem XGradCAM's sum of gradient x activation over the target map equals the same sum
    over the pooled map, and the saliency backward pass can stop there.
    """

    name: str
    description: str
    builder: Callable[[int, int, int], nn.Module]
    target_layer: Callable[[nn.Module], nn.Module]
    min_image_size: int = 16
    load_pretrained: Callable[[nn.Module, Path], None] | None = None
    pooled_layer: Callable[[nn.Module], nn.Module] | None = None


class SmallCNN(nn.Module):
    """The paper's MNIST network: conv16-conv16-pool-conv32-conv32-pool, then FC 512 -> 256 -> K.

    BatchNorm as in the reference code, but with padded 3x3 convolutions: the reference's unpadded ones give
    an 8x8 map whose cells are centred 6.5 px in from the border, so a heatmap resized over the whole image is
    shifted by up to 5 px and a mask misses a feature near the border (a corner square was 22 % covered on
    average). Padded, a 28 px input gives a 14x14 map after the 4th conv that lines up with the image. The
    adaptive pooling keeps the FC input at 32x4x4 for any input size.
    """

    def __init__(self, num_classes: int, in_channels: int) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, 16, 3, padding=1),
            nn.BatchNorm2d(16),
            nn.ReLU(),
            nn.Conv2d(16, 16, 3, padding=1),
            nn.BatchNorm2d(16),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(16, 32, 3, padding=1),
            nn.BatchNorm2d(32),
            nn.ReLU(),
            nn.Conv2d(32, 32, 3, padding=1),
            nn.BatchNorm2d(32),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.AdaptiveAvgPool2d(4),
        )
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(32 * 4 * 4, 256),
            nn.BatchNorm1d(256),
            nn.ReLU(),
            nn.Linear(256, num_classes),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.features(x))


class SmallVGG(nn.Module):
    """The report's small VGG: two groups of two 3x3 convs (32 then 64 channels) with ReLU and max-pool,
    then three FC layers. Adaptive pooling to 4x4 keeps the FC size fixed for any input size."""

    def __init__(self, num_classes: int, in_channels: int) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, 32, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(32, 32, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(64, 64, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.AdaptiveAvgPool2d(4),
        )
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(64 * 4 * 4, 256),
            nn.ReLU(),
            nn.Linear(256, 128),
            nn.ReLU(),
            nn.Linear(128, num_classes),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.features(x))


# Below this size a torchvision stem (7x7 stride 2 + max-pool) leaves layer4 with a 1x1 map at 32 px, where
# every CAM is constant; the CIFAR stem keeps the resolution (32 px -> 4x4 layer4 map).
CIFAR_STEM_BELOW = 64


def _uses_cifar_stem(image_size: int) -> bool:
    return image_size < CIFAR_STEM_BELOW


def _torchvision_resnet(arch: str) -> Callable[[int, int, int], nn.Module]:
    def build(num_classes: int, in_channels: int, image_size: int) -> nn.Module:
        from torchvision import models as tv_models

        net = getattr(tv_models, arch)(weights=None, num_classes=num_classes)
        if _uses_cifar_stem(image_size):
            net.conv1 = nn.Conv2d(in_channels, 64, kernel_size=3, stride=1, padding=1, bias=False)
            net.maxpool = nn.Identity()
        elif in_channels != 3:
            net.conv1 = nn.Conv2d(in_channels, 64, kernel_size=7, stride=2, padding=3, bias=False)
        # torchvision initialises its convs this way; a replaced stem gets the same treatment
        nn.init.kaiming_normal_(net.conv1.weight, mode="fan_out", nonlinearity="relu")
        return net

    return build


def _load_torchvision_pretrained(backbone: nn.Module, path: Path) -> None:
    """Load a torchvision ResNet state_dict, keeping this backbone's new K-class ``fc``.

    ``conv1`` is skipped for the CIFAR stem (3x3, its shape differs from the 7x7 file); for a
    single-channel 7x7 stem the RGB filters are summed, which gives a grey image the response the
    pretrained net has to the same image in colour.
    """
    state = _read_state_dict(path, lambda msg: ConfigError("pretrained", msg))
    own = {k: v for k, v in backbone.state_dict().items() if not k.startswith("fc.")}
    state = {k: v for k, v in state.items() if not k.startswith("fc.")}
    notes = ["fc (new head)"]
    file_conv1, own_conv1 = state.get("conv1.weight"), own["conv1.weight"]
    if file_conv1 is not None and file_conv1.shape != own_conv1.shape:
        if file_conv1.shape[2:] == own_conv1.shape[2:] and own_conv1.shape[1] == 1:
            state["conv1.weight"] = file_conv1.sum(dim=1, keepdim=True)
            notes.append("conv1 RGB filters summed for 1 input channel")
        else:
            del state["conv1.weight"], own["conv1.weight"]
            notes.append("conv1 (the 3x3 CIFAR stem is trained from scratch)")
    missing = sorted(own.keys() - state.keys())
    unexpected = sorted(state.keys() - own.keys())
    wrong = sorted(k for k in state.keys() & own.keys() if state[k].shape != own[k].shape)
    if missing or unexpected or wrong:
        raise ConfigError(
            "pretrained",
            f"{path} is not a state_dict of a torchvision ResNet of this depth: "
            + _describe_key_problems(missing, unexpected, wrong, state, own),
        )
    backbone.load_state_dict(state, strict=False)
    logger.info("pretrained weights from %s loaded; not loaded: %s", path, "; ".join(notes))


def _relu_after_last_conv(features: nn.Sequential) -> nn.Module:
    """Found by type, not by index, so adding a BatchNorm can never silently move the CAM target."""
    layers = list(features)
    last_conv = max(i for i, layer in enumerate(layers) if isinstance(layer, nn.Conv2d))
    return next(layer for layer in layers[last_conv:] if isinstance(layer, nn.ReLU))


def _small_cnn_target(backbone: nn.Module) -> nn.Module:
    return _relu_after_last_conv(backbone.features)  # the ReLU after the 4th conv


def _vgg_target(backbone: nn.Module) -> nn.Module:
    return _relu_after_last_conv(backbone.features)  # before the second pool


def _resnet_target(backbone: nn.Module) -> nn.Module:
    return backbone.layer4[-1]


def _pooled_features(backbone: nn.Module) -> nn.Module:
    return backbone.features  # ends: target ReLU -> max-pool -> adaptive average pool


def _resnet_pooled(backbone: nn.Module) -> nn.Module:
    return backbone.avgpool


MODELS: dict[str, ModelInfo] = {
    info.name: info
    for info in (
        ModelInfo(
            "small-cnn",
            "the paper's MNIST CNN (4 convs, 2 FC); CAM on the 4th conv's ReLU",
            lambda k, c, s: SmallCNN(k, c),
            _small_cnn_target,
            min_image_size=16,
            pooled_layer=_pooled_features,
        ),
        ModelInfo(
            "vgg",
            "small VGG (2x32, 2x64 convs, 3 FC); CAM on the last conv's ReLU",
            lambda k, c, s: SmallVGG(k, c),
            _vgg_target,
            min_image_size=8,
            pooled_layer=_pooled_features,
        ),
        ModelInfo(
            "resnet18",
            f"torchvision ResNet-18, CIFAR stem below {CIFAR_STEM_BELOW} px; CAM on layer4[-1]",
            _torchvision_resnet("resnet18"),
            _resnet_target,
            min_image_size=16,
            load_pretrained=_load_torchvision_pretrained,
            pooled_layer=_resnet_pooled,
        ),
        ModelInfo(
            "resnet50",
            f"torchvision ResNet-50, CIFAR stem below {CIFAR_STEM_BELOW} px; CAM on layer4[-1]",
            _torchvision_resnet("resnet50"),
            _resnet_target,
            min_image_size=16,
            load_pretrained=_load_torchvision_pretrained,
            pooled_layer=_resnet_pooled,
        ),
    )
}


def get_model_info(name: str) -> ModelInfo:
    if name not in MODELS:
        raise ConfigError("backbone", f"unknown backbone {name!r}; choose one of {', '.join(MODELS)}")
    return MODELS[name]


class Classifier(nn.Module):
    """Normalises raw [0,1] pixels inside the model, so masks and fills act on raw pixels.

    ``mean`` and ``std`` are buffers saved with the weights, so a checkpoint carries its normalisation.
    """

    def __init__(
        self, backbone: nn.Module, mean: Sequence[float], std: Sequence[float], backbone_name: str
    ) -> None:
        super().__init__()
        if len(mean) != len(std):
            raise ValueError(f"mean has {len(mean)} channels but std has {len(std)}")
        self.backbone = backbone
        self.backbone_name = backbone_name
        self.register_buffer("mean", torch.tensor(list(mean), dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(list(std), dtype=torch.float32).view(1, -1, 1, 1))

    def forward(self, x: Tensor) -> Tensor:
        return self.backbone((x - self.mean) / self.std)

    def target_layer(self) -> nn.Module:
        return MODELS[self.backbone_name].target_layer(self.backbone)

    def pooled_layer(self) -> nn.Module | None:
        """See ``ModelInfo.pooled_layer``; None where the backbone declares none."""
        find = MODELS[self.backbone_name].pooled_layer
        return None if find is None else find(self.backbone)

    @property
    def num_classes(self) -> int:
        return int(_head_weight(self.state_dict())[1].shape[0])


def build_model(
    name: str,
    num_classes: int,
    in_channels: int,
    image_size: int,
    mean: Sequence[float],
    std: Sequence[float],
    pretrained: str | None = None,
) -> Classifier:
    """Build a fresh ``Classifier``; ``pretrained`` is a local weight file (nothing is downloaded)."""
    info = get_model_info(name)
    if num_classes < 2:
        raise ConfigError("num_classes", f"a classifier needs at least 2 classes, got {num_classes}")
    if image_size < info.min_image_size:
        raise ConfigError(
            "image_size",
            f"backbone {name!r} needs images of at least {info.min_image_size} px, got {image_size}",
        )
    if len(mean) != in_channels or len(std) != in_channels:
        raise ValueError(f"mean/std need {in_channels} values, got {len(mean)} and {len(std)}")
    backbone = info.builder(num_classes, in_channels, image_size)
    if pretrained:
        if info.load_pretrained is None:
            supported = ", ".join(n for n, i in MODELS.items() if i.load_pretrained is not None)
            raise ConfigError(
                "pretrained", f"backbone {name!r} takes no pretrained weights; only {supported} do"
            )
        path = Path(pretrained)
        if not path.is_file():
            raise ConfigError("pretrained", f"weight file not found: {path}")
        info.load_pretrained(backbone, path)
    return Classifier(backbone, mean, std, name)


def save_state(model: nn.Module, path: str | Path) -> None:
    """Write ``model.state_dict()`` to ``path`` atomically and durably (``runs.atomic_path``)."""
    with atomic_path(path) as tmp:
        torch.save(model.state_dict(), tmp)


def load_state(model: Classifier, path: str | Path) -> None:
    """Load a ``save_state`` file into ``model``; a file of another backbone, class count or input format,
    or one that is not a plain tensor dict, raises ``CheckpointError`` naming the file."""
    path = Path(path)
    state = _read_state_dict(path, CheckpointError)
    own = model.state_dict()
    missing = sorted(own.keys() - state.keys())
    unexpected = sorted(state.keys() - own.keys())
    wrong = sorted(k for k in own.keys() & state.keys() if own[k].shape != state[k].shape)
    if missing or unexpected or wrong:
        raise CheckpointError(_mismatch_sentence(model, path, state, missing, unexpected, wrong))
    model.load_state_dict(state)


def _read_state_dict(path: Path, error: Callable[[str], Exception]) -> dict[str, Tensor]:
    if not path.is_file():
        raise error(f"checkpoint file not found: {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises UnpicklingError, RuntimeError or EOFError here
        # torch's own message is a long how-to for unsafe loading; this one says what is wrong.
        raise error(
            f"{path} cannot be read as a weights-only checkpoint: it is damaged, or it holds Python objects "
            "besides tensors, which are refused because loading them could run code"
        ) from exc
    if not isinstance(state, dict) or not all(
        isinstance(k, str) and isinstance(v, Tensor) for k, v in state.items()
    ):
        raise error(f"{path} does not hold a state_dict (a dict of named tensors)")
    return state


def _head_weight(state: dict[str, Tensor]) -> tuple[str, Tensor]:
    """The output layer's weight: the last 2-D tensor, since every backbone here ends with a Linear."""
    key = [k for k, v in state.items() if v.dim() == 2][-1]
    return key, state[key]


def _guess_backbone(model: Classifier, state: dict[str, Tensor]) -> str | None:
    """The registered backbone whose parameter names match the file's (names do not depend on sizes)."""
    in_channels = int(model.mean.shape[1])
    with torch.device("meta"):
        for name, info in MODELS.items():
            if info.builder(2, in_channels, 32).state_dict().keys() == {
                k.removeprefix("backbone.") for k in state if k.startswith("backbone.")
            }:
                return name
    return None


def _mismatch_sentence(
    model: Classifier,
    path: Path,
    state: dict[str, Tensor],
    missing: list[str],
    unexpected: list[str],
    wrong: list[str],
) -> str:
    expected = f"backbone {model.backbone_name!r} with {model.num_classes} classes"
    found = _guess_backbone(model, state)
    if found is not None and found != model.backbone_name:
        return f"checkpoint {path} was saved from backbone {found!r}, but the model is {expected}"
    if found == model.backbone_name:
        head_key, head = _head_weight(model.state_dict())
        if head_key in wrong and state[head_key].shape[1:] == head.shape[1:]:
            return f"checkpoint {path} has {state[head_key].shape[0]} classes, but the model is {expected}"
    return f"checkpoint {path} does not fit {expected}: " + _describe_key_problems(
        missing, unexpected, wrong, state, model.state_dict()
    )


def _describe_key_problems(
    missing: list[str],
    unexpected: list[str],
    wrong: list[str],
    state: dict[str, Tensor],
    own: dict[str, Tensor],
) -> str:
    def few(keys: list[str]) -> str:
        return ", ".join(keys[:3]) + (f" and {len(keys) - 3} more" if len(keys) > 3 else "")

    parts = []
    if wrong:
        k = wrong[0]
        parts.append(
            f"{len(wrong)} tensor(s) of another shape (e.g. {k}: file {list(state[k].shape)}, "
            f"model {list(own[k].shape)})"
        )
    if missing:
        parts.append(f"missing {few(missing)}")
    if unexpected:
        parts.append(f"unexpected {few(unexpected)}")
    return "; ".join(parts)


def load_run_models(run_path: str | Path, names: Sequence[str]) -> dict[str, Classifier]:
    """The trained models of a run directory (CPU, eval mode), by checkpoint name; absent ones are left out.

    The architecture comes from the run's config.json and dataset.json, so nothing else is needed.
    """
    from masktune_core.runs import Run, read_json

    run = Run(Path(run_path))
    config, summary = run.config(), read_json(run.file("dataset.json")) or {}
    loaded = {}
    for name in names:
        path = run.checkpoint_path(name)
        if not path.exists():
            continue
        model = build_model(
            config["backbone"],
            len(summary["class_names"]),
            summary["channels"],
            summary["image_size"],
            summary["mean"],
            summary["std"],
        )
        load_state(model, path)
        loaded[name] = model.eval()
    return loaded
