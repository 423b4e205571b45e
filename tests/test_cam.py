import functools

import pytest
import torch

from masktune_core.cam import compute_heatmaps
from masktune_core.config import CAM_METHODS
from masktune_core.errors import ConfigError
from masktune_core.models import Classifier, build_model

# Small inputs keep resnet50's library pass (a full backward) well under a second on 2 CPU cores. The
# sizes give 14->28, 16->32, 4->32 and 3->20 px upsampling, so non-integer resize factors are covered.
BACKBONES = [("small-cnn", 1, 28), ("vgg", 3, 32), ("resnet18", 3, 32), ("resnet50", 3, 20)]
HOOK_DICTS = (
    "_forward_hooks",
    "_forward_pre_hooks",
    "_backward_hooks",
    "_backward_pre_hooks",
    "_forward_hooks_with_kwargs",
    "_forward_hooks_always_called",
    "_forward_pre_hooks_with_kwargs",
    "_state_dict_hooks",
    "_load_state_dict_pre_hooks",
)


def _model(name: str, channels: int, size: int, seed: int = 0) -> Classifier:
    torch.manual_seed(seed)
    return build_model(name, 4, channels, size, [0.5] * channels, [0.25] * channels)


@functools.cache
def _eval_model(name: str, channels: int, size: int) -> Classifier:
    """Shared by tests that only read the model (compute_heatmaps leaves it unchanged, tested below)."""
    return _model(name, channels, size).eval()


def _snapshot(model: Classifier) -> dict:
    return {
        "modes": [m.training for m in model.modules()],
        "requires_grad": [p.requires_grad for p in model.parameters()],
        "grad_objects": [p.grad for p in model.parameters()],
        "grad_values": [None if p.grad is None else p.grad.clone() for p in model.parameters()],
        "hooks": [{name: dict(getattr(m, name)) for name in HOOK_DICTS} for m in model.modules()],
        "state": {k: v.clone() for k, v in model.state_dict().items()},
    }


def _assert_unchanged(model: Classifier, before: dict) -> None:
    after = _snapshot(model)
    assert after["modes"] == before["modes"]
    assert after["requires_grad"] == before["requires_grad"]
    assert all(a is b for a, b in zip(after["grad_objects"], before["grad_objects"], strict=True))
    for a, b in zip(after["grad_values"], before["grad_values"], strict=True):
        assert (a is None and b is None) or torch.equal(a, b)
    assert after["hooks"] == before["hooks"]
    assert after["state"].keys() == before["state"].keys()
    for key, value in before["state"].items():
        assert torch.equal(after["state"][key], value), key


@pytest.mark.parametrize(("name", "channels", "size"), BACKBONES)
@pytest.mark.parametrize("method", ["xgradcam", "gradcam"])
def test_fast_path_equals_pytorch_grad_cam(name: str, channels: int, size: int, method: str) -> None:
    # float32 is enough: the two paths differ by float rounding only (a few 1e-7 on these models).
    model = _eval_model(name, channels, size)
    images = torch.rand(2, channels, size, size, generator=torch.Generator().manual_seed(1))
    fast = compute_heatmaps(model, images, method, fast=True)
    library = compute_heatmaps(model, images, method, fast=False)
    assert fast.shape == library.shape == (2, size, size)
    assert fast.dtype == torch.float32
    # A constant map would make the comparison empty: each one spans [0, 1].
    assert torch.allclose(fast.amin(dim=(1, 2)), torch.zeros(2)) and (fast.amax(dim=(1, 2)) > 0.99).all()
    assert (fast - library).abs().max().item() <= 1e-5


def test_target_is_the_predicted_class() -> None:
    model = _model("small-cnn", 1, 28).eval()
    images = torch.rand(2, 1, 28, 28)
    acts = []
    handle = model.target_layer().register_forward_hook(lambda m, i, o: acts.append(o))
    logits = model(images)
    handle.remove()
    cls = logits.argmax(dim=1)
    grads = torch.autograd.grad(logits[torch.arange(2), cls].sum(), acts[0])[0]
    cam = torch.relu((grads.mean(dim=(2, 3))[:, :, None, None] * acts[0]).sum(dim=1)).detach()
    expected = torch.nn.functional.interpolate(cam[:, None], size=(28, 28), mode="bilinear")[:, 0]
    low = expected.amin(dim=(1, 2), keepdim=True)
    expected = (expected - low) / (expected.amax(dim=(1, 2), keepdim=True) - low)
    assert torch.allclose(compute_heatmaps(model, images, "gradcam"), expected, atol=1e-5)


@pytest.mark.parametrize("fast", [True, False])
def test_model_comes_back_exactly_as_it_was(fast: bool) -> None:
    model = _model("small-cnn", 1, 28).train()
    model.backbone.classifier.eval()  # a mixed train/eval state must survive as is
    model(torch.rand(4, 1, 28, 28)).sum().backward()  # every parameter now holds a .grad
    model.backbone.features[0].weight.requires_grad_(False)
    model.backbone.features[0].weight.grad = None
    user_hook = model.target_layer().register_forward_hook(lambda m, i, o: None)
    before = _snapshot(model)
    heat = compute_heatmaps(model, torch.rand(2, 1, 28, 28), "xgradcam", fast=fast)
    assert heat.shape == (2, 28, 28)
    _assert_unchanged(model, before)
    user_hook.remove()


def test_train_mode_model_gets_eval_mode_maps_on_both_paths() -> None:
    model = _model("small-cnn", 1, 28).train()
    images = torch.rand(3, 1, 28, 28)
    fast = compute_heatmaps(model, images, "xgradcam", fast=True)
    library = compute_heatmaps(model, images, "xgradcam", fast=False)
    assert model.training
    assert (fast - library).abs().max().item() <= 1e-5
    assert torch.allclose(compute_heatmaps(model.eval(), images), fast)


def test_each_map_depends_on_its_own_image_only() -> None:
    # The batch's logits are summed into one score: exact only because no layer mixes images in eval
    # mode, even for a model handed over in train mode with BatchNorm.
    model = _model("small-cnn", 1, 28).train()
    images = torch.rand(4, 1, 28, 28)
    together = compute_heatmaps(model, images)
    alone = torch.cat([compute_heatmaps(model, images[i : i + 1]) for i in range(4)])
    assert (together - alone).abs().max().item() <= 1e-5


@pytest.mark.parametrize("fast", [True, False])
def test_works_under_no_grad(fast: bool) -> None:
    model = _model("vgg", 3, 32).eval()
    with torch.no_grad():
        heat = compute_heatmaps(model, torch.rand(2, 3, 32, 32), "gradcam", fast=fast)
    assert heat.shape == (2, 32, 32) and heat.max() > 0.99


@pytest.mark.parametrize("method", ["gradcam++", "eigencam", "layercam"])
def test_library_methods_give_unit_range_maps(method: str) -> None:
    model = _model("vgg", 3, 32).eval()
    before = _snapshot(model)
    heat = compute_heatmaps(model, torch.rand(2, 3, 32, 32), method)
    assert heat.shape == (2, 32, 32) and heat.dtype == torch.float32
    assert heat.min() >= 0 and heat.max() <= 1 and heat.max() > 0.99
    _assert_unchanged(model, before)


def test_unknown_method_is_a_config_error() -> None:
    with pytest.raises(ConfigError) as err:
        compute_heatmaps(_model("small-cnn", 1, 28), torch.rand(1, 1, 28, 28), "scorecam")
    assert err.value.field == "cam_method"
    assert all(m in str(err.value) for m in CAM_METHODS)
