"""Saliency heatmaps: pytorch-grad-cam, and a fast path that gives the same maps for XGradCAM and GradCAM.

The maps follow pytorch-grad-cam exactly for the same method, the model's target layer and
``targets=None`` (the target is each image's predicted class): ReLU of the weighted activation sum,
per-image min-max to [0, 1], bilinear resize to the input size, then min-max once more (the library's
multi-layer aggregation step, a near no-op for one layer that is kept for equality).

Fast path ("xgradcam", "gradcam"): one forward in eval mode with the parameters frozen. A forward hook
swaps the target activation A for a detached leaf that requires grad, so nothing before the target layer
records a graph, and ``torch.autograd.grad(score, A)`` only runs back through the layers after it (for a
ResNet: the pooling and the fc). For XGradCAM on a backbone that declares a pooled layer (see
``ModelInfo.pooled_layer``), the leaf is that pooled output instead and the backward pass covers only
the classifier head. Summing the predicted-class logits over the batch into one score is exact
in eval mode, where no layer mixes images (BatchNorm uses its running statistics).

Library path (every method, and the two above with ``fast=False``): pytorch-grad-cam with its side effects
contained. It would leave the model in eval mode, overwrite parameter ``.grad``, keep its hooks while the
CAM object lives, hold the whole graph in ``cam.outputs``, swallow an ``IndexError`` in ``with`` and fail
under ``torch.no_grad()``; here each call uses a short-lived CAM object without ``with``, releases its
hooks, drops its outputs, runs under ``torch.enable_grad()`` and restores the model.

Both paths leave the model as they found it: per-module train/eval flags, each parameter's
``requires_grad`` and ``.grad`` object, hooks and weights.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from masktune_core.config import check_choice
from masktune_core.models import Classifier

FAST_METHODS: tuple[str, ...] = ("xgradcam", "gradcam")

_LIBRARY_CLASSES = {
    "xgradcam": "XGradCAM",
    "gradcam": "GradCAM",
    "gradcam++": "GradCAMPlusPlus",
    "layercam": "LayerCAM",
    "eigencam": "EigenCAM",
}

# pytorch-grad-cam's epsilons: XGradCAM's weight denominator and scale_cam_image's min-max denominator.
_XGRAD_EPS = 1e-7
_SCALE_EPS = 1e-7


def compute_heatmaps(
    model: Classifier, images: Tensor, method: str = "xgradcam", fast: bool = True
) -> Tensor:
    """Heatmaps float32 [B, H, W] in [0, 1] for float images [B, C, H, W] in [0, 1] on the model's device.

    ``fast`` picks the fast path where one exists (``FAST_METHODS``); the other methods always go
    through pytorch-grad-cam. Both give the library's maps; the model comes back unchanged.
    """
    return heatmaps_and_logits(model, images, method, fast)[0]


def heatmaps_and_logits(
    model: Classifier, images: Tensor, method: str = "xgradcam", fast: bool = True
) -> tuple[Tensor, Tensor]:
    """``compute_heatmaps`` and the eval-mode logits [B, K] of the forward pass that made them, detached.

    Every CAM needs that forward for its activations and target class, so a caller that also wants the
    model's predictions gets them without a second pass.
    """
    check_choice("cam_method", method)
    # Always fp32, even inside a caller's autocast region: pytorch-grad-cam turns maps into numpy arrays,
    # which have no bf16, and half-precision gradients would move the thresholds.
    with _model_state_restored(model), torch.autocast(images.device.type, enabled=False):
        images = images.float()
        if fast and method in FAST_METHODS:
            return _fast_heatmaps(model, images, method)
        return _library_heatmaps(model, images, method)


@contextmanager
def _model_state_restored(model: nn.Module) -> Iterator[None]:
    modes = [(m, m.training) for m in model.modules()]
    params = [(p, p.requires_grad, p.grad) for p in model.parameters()]
    try:
        yield
    finally:
        # Set flags per module: ``train(flag)`` would push one flag down to every child.
        for module, training in modes:
            module.training = training
        for param, requires_grad, grad in params:
            param.requires_grad_(requires_grad)
            param.grad = grad


def _fast_heatmaps(model: Classifier, images: Tensor, method: str) -> tuple[Tensor, Tensor]:
    model.eval()
    for param in model.parameters():
        param.requires_grad_(False)
    pooled = model.pooled_layer() if method == "xgradcam" else None
    # With a pooled layer, the gradient is taken there (see ModelInfo.pooled_layer) and the target
    # activation is only read; otherwise the target activation itself becomes the leaf.
    leaf_layer = model.target_layer() if pooled is None else pooled
    captured: dict[str, Tensor] = {}

    def keep_target(_module: nn.Module, _inputs: object, output: Tensor) -> None:
        captured["acts"] = output.detach()

    def swap_for_leaf(_module: nn.Module, _inputs: object, output: Tensor) -> Tensor:
        leaf = output.detach().requires_grad_(True)
        captured["leaf"] = leaf
        return leaf

    handles = [leaf_layer.register_forward_hook(swap_for_leaf)]
    if pooled is not None:
        handles.append(model.target_layer().register_forward_hook(keep_target))
    try:
        with torch.enable_grad():
            logits = model(images)
            score = logits.gather(1, logits.argmax(dim=1, keepdim=True)).sum()
            (grads,) = torch.autograd.grad(score, captured["leaf"])
    finally:
        for handle in handles:
            handle.remove()
    leaf = captured["leaf"].detach()
    acts = captured.get("acts", leaf)
    if method == "xgradcam":
        weights = (grads * leaf).flatten(2).sum(2) / (acts.sum(dim=(2, 3)) + _XGRAD_EPS)
    else:
        weights = grads.mean(dim=(2, 3))
    batch, _, height, width = acts.shape
    # sum_c w_c A_c as one batched matrix product: fewer passes over A than multiply-then-sum.
    cam = torch.relu(torch.bmm(weights.unsqueeze(1), acts.flatten(2)).view(batch, height, width))
    return _scale_like_library(cam, tuple(images.shape[-2:])), logits.detach()


def _minmax(cam: Tensor) -> Tensor:
    # max(x - min) == max(x) - min in floating point (rounding is monotonic), so one aminmax pass
    # gives the library's denominator exactly.
    low, high = torch.aminmax(cam.flatten(1), dim=1)
    return (cam - low[:, None, None]) / (_SCALE_EPS + (high - low))[:, None, None]


def _scale_like_library(cam: Tensor, size: tuple[int, int]) -> Tensor:
    """scale_cam_image(cam, size) then scale_cam_image(result): cv2.resize's INTER_LINEAR upsampling uses
    half-pixel centres and edge clamping, which is bilinear interpolation with align_corners=False."""
    cam = _minmax(cam).float()
    if tuple(cam.shape[-2:]) != size:
        cam = F.interpolate(cam[:, None], size=size, mode="bilinear", align_corners=False)[:, 0]
    return _minmax(cam)


def _library_heatmaps(model: Classifier, images: Tensor, method: str) -> tuple[Tensor, Tensor]:
    import pytorch_grad_cam  # lazy: it pulls in scikit-learn and cv2 (~1.5 s)

    # The library reads gradients from a hook on the target activation, which needs a graph; a frozen
    # model (or one a caller froze) would give none. The saved flags are restored on the way out.
    for param in model.parameters():
        param.requires_grad_(True)
    cam_class = getattr(pytorch_grad_cam, _LIBRARY_CLASSES[method])
    with torch.enable_grad():
        cam = cam_class(model=model, target_layers=[model.target_layer()])
        try:
            maps = cam(input_tensor=images, targets=None)
            logits = cam.outputs.detach()  # the library's own forward pass, in eval mode
        finally:
            cam.activations_and_grads.release()
            cam.outputs = None
    return torch.from_numpy(maps).to(images.device), logits
