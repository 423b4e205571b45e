from pathlib import Path

import pytest
import torch
from torchvision.models import resnet18

from masktune_core.errors import CheckpointError, ConfigError
from masktune_core.models import MODELS, Classifier, build_model, load_state, save_state


def _build(name: str, num_classes: int = 3, channels: int = 3, size: int = 32, **kwargs) -> Classifier:
    return build_model(name, num_classes, channels, size, [0.5] * channels, [0.25] * channels, **kwargs)


def _target_shape(model: Classifier, x: torch.Tensor) -> tuple[int, ...]:
    seen = []
    handle = model.target_layer().register_forward_hook(lambda m, i, o: seen.append(tuple(o.shape)))
    try:
        with torch.no_grad():
            model(x)
    finally:
        handle.remove()
    return seen[0]


CASES = [
    *(
        (name, channels, size)
        for name in ("small-cnn", "vgg")
        for channels, size in ((1, 28), (3, 32), (3, 64))
    ),
    ("resnet18", 1, 28),  # CIFAR stem
    ("resnet18", 3, 32),
    ("resnet18", 3, 64),  # torchvision stem
    ("resnet50", 3, 32),
]


def test_registry_names() -> None:
    assert set(MODELS) == {"small-cnn", "vgg", "resnet18", "resnet50"}


@pytest.mark.parametrize(("name", "channels", "size"), CASES)
def test_forward_gives_logits_and_a_spatial_cam_map(name: str, channels: int, size: int) -> None:
    model = _build(name, num_classes=5, channels=channels, size=size).eval()
    x = torch.rand(2, channels, size, size)
    with torch.no_grad():
        logits = model(x)
    assert logits.shape == (2, 5)
    assert torch.isfinite(logits).all()
    shape = _target_shape(model, x)
    assert shape[0] == 2 and shape[2] > 1 and shape[3] > 1


def test_small_cnn_cam_map_is_14x14_at_28px() -> None:
    # Padded convs: the map after the 4th conv lines up with the image (see SmallCNN's docstring).
    model = _build("small-cnn", channels=1, size=28).eval()
    assert _target_shape(model, torch.rand(1, 1, 28, 28))[1:] == (32, 14, 14)


def test_resnet18_at_32px_has_a_4x4_cam_map() -> None:
    model = _build("resnet18", size=32).eval()
    assert _target_shape(model, torch.rand(1, 3, 32, 32))[2:] == (4, 4)


def test_normalisation_happens_inside_the_model() -> None:
    model = build_model("small-cnn", 2, 1, 28, [0.2], [0.5]).eval()
    x = torch.rand(2, 1, 28, 28)
    with torch.no_grad():
        assert torch.allclose(model(x), model.backbone((x - 0.2) / 0.5))


def test_unknown_backbone_names_the_field_and_the_choices() -> None:
    with pytest.raises(ConfigError) as err:
        _build("alexnet")
    assert err.value.field == "backbone"
    assert "alexnet" in str(err.value) and "resnet18" in str(err.value)


def test_too_small_image_is_a_config_error() -> None:
    with pytest.raises(ConfigError) as err:
        _build("small-cnn", size=8)
    assert err.value.field == "image_size"


def test_state_round_trip(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = _build("small-cnn", channels=1, size=28)
    path = tmp_path / "ckpt" / "erm.pt"
    save_state(model, path)
    assert [p.name for p in path.parent.iterdir()] == ["erm.pt"]  # no temp file left behind
    torch.manual_seed(1)
    other = build_model("small-cnn", 3, 1, 28, [0.0], [1.0])
    load_state(other, path)
    for key, value in model.state_dict().items():
        assert torch.equal(other.state_dict()[key], value), key
    assert torch.equal(other.mean, model.mean)  # the normalisation travels with the weights
    x = torch.rand(2, 1, 28, 28)
    with torch.no_grad():
        assert torch.equal(model.eval()(x), other.eval()(x))


def test_checkpoint_of_another_backbone_is_rejected(tmp_path: Path) -> None:
    path = tmp_path / "vgg.pt"
    save_state(_build("vgg"), path)
    with pytest.raises(CheckpointError) as err:
        load_state(_build("small-cnn"), path)
    message = str(err.value)
    assert str(path) in message and "'vgg'" in message and "'small-cnn'" in message


def test_checkpoint_with_another_class_count_is_rejected(tmp_path: Path) -> None:
    path = tmp_path / "ten.pt"
    save_state(_build("resnet18", num_classes=10), path)
    with pytest.raises(CheckpointError) as err:
        load_state(_build("resnet18", num_classes=2), path)
    message = str(err.value)
    assert str(path) in message and "10 classes" in message and "2 classes" in message


class NotATensorDict:
    def __init__(self) -> None:
        self.payload = [1, 2, 3]


def test_pickle_bearing_checkpoint_is_rejected(tmp_path: Path) -> None:
    path = tmp_path / "object.pt"
    torch.save(NotATensorDict(), path)
    with pytest.raises(CheckpointError) as err:
        load_state(_build("small-cnn"), path)
    assert str(path) in str(err.value)


def test_non_dict_and_missing_checkpoints_are_rejected(tmp_path: Path) -> None:
    listed = tmp_path / "list.pt"
    torch.save([torch.zeros(1)], listed)
    with pytest.raises(CheckpointError, match="state_dict"):
        load_state(_build("small-cnn"), listed)
    with pytest.raises(CheckpointError, match="not found"):
        load_state(_build("small-cnn"), tmp_path / "absent.pt")


@pytest.fixture(scope="module")
def torchvision_resnet18_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("weights") / "resnet18.pth"
    torch.save(resnet18(weights=None).state_dict(), path)
    return path


def test_pretrained_resnet_keeps_its_new_head_and_cifar_stem(torchvision_resnet18_file: Path) -> None:
    weights = torch.load(torchvision_resnet18_file, weights_only=True)
    model = _build("resnet18", num_classes=4, size=32, pretrained=str(torchvision_resnet18_file))
    own = model.backbone.state_dict()
    assert torch.equal(own["layer3.0.conv1.weight"], weights["layer3.0.conv1.weight"])
    assert own["fc.weight"].shape == (4, 512)
    assert own["conv1.weight"].shape == (64, 3, 3, 3)


def test_pretrained_grey_resnet_sums_the_rgb_stem(torchvision_resnet18_file: Path) -> None:
    weights = torch.load(torchvision_resnet18_file, weights_only=True)
    model = _build("resnet18", channels=1, size=64, pretrained=str(torchvision_resnet18_file))
    assert torch.allclose(
        model.backbone.conv1.weight, weights["conv1.weight"].sum(dim=1, keepdim=True), atol=1e-6
    )


def test_pretrained_errors_name_the_field(torchvision_resnet18_file: Path, tmp_path: Path) -> None:
    for name, path in (
        ("resnet18", tmp_path / "absent.pth"),
        ("resnet50", torchvision_resnet18_file),  # another depth
        ("vgg", torchvision_resnet18_file),  # a backbone without pretrained weights
    ):
        with pytest.raises(ConfigError) as err:
            _build(name, pretrained=str(path))
        assert err.value.field == "pretrained"
