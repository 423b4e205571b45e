from pathlib import Path

import numpy as np
import pytest
import torch
from scipy import ndimage

from masktune_core.cam import compute_heatmaps
from masktune_core.errors import ConfigError, DataError
from masktune_core.masking import (
    RandomBlocks,
    apply_masks,
    compute_masks,
    iter_masks,
    load_masks,
    load_packed_masks,
    random_masks_like,
    run_masks,
    save_masks,
    threshold_masks,
)
from masktune_core.models import build_model
from masktune_core.train import predict_probs


def test_mean_plus_two_std_on_a_hand_made_map() -> None:
    # Positive pixels: eight 1s and one 9. mu = 17/9 = 1.889, population variance
    # (8 * (8/9)^2 + (64/9)^2) / 9 = 4608/729 = 6.321, sigma = 2.514, threshold = 1.889 + 5.028 = 6.917:
    # only the 9 is masked. The -20 and the zeros are not positive, so they take no part in mu or sigma:
    # counting the -20 would give mu = -0.3, sigma = 6.99, a threshold of 13.67 and no mask at all.
    heat = torch.zeros(1, 5, 5)
    heat[0, 0, :5] = 1
    heat[0, 1, :3] = 1
    heat[0, 4, 4] = 9
    heat[0, 2, 2] = -20
    mask = threshold_masks(heat)
    assert mask.dtype == torch.bool and mask.shape == (1, 5, 5)
    assert mask.nonzero().tolist() == [[0, 4, 4]]


def test_dilation_grows_a_mask_by_its_radius_and_leaves_an_empty_mask_empty() -> None:
    heat = torch.zeros(2, 7, 7)
    heat[0, 0, :], heat[0, 1, 0], heat[0, 3, 4] = 1.0, 1.0, 9.0  # only (3, 4) passes mu + 2 sigma
    masks = threshold_masks(heat, dilation=1)
    expected = torch.zeros(7, 7, dtype=torch.bool)
    expected[2:5, 3:6] = True  # the 3x3 square around (3, 4)
    assert torch.equal(masks[0], expected)
    assert not masks[1].any()  # an all-zero heatmap has no mask to grow
    grown = threshold_masks(heat, dilation=2)[0]
    assert grown.sum() == 25 and grown[1:6, 2:7].all()  # clipped at no border here: 5x5


def test_run_masks_reads_a_runs_settings_and_old_runs_without_dilation() -> None:
    heat = torch.zeros(1, 6, 6)
    heat[0, 0, :], heat[0, 1, :2], heat[0, 3, 3] = 1.0, 1.0, 9.0
    old = {"threshold_rule": "mean+2std", "topk_percent": 10.0}
    assert torch.equal(run_masks(heat, old), threshold_masks(heat))
    assert run_masks(heat, {**old, "mask_dilation": 1})[0].sum() == 9


def test_mean_plus_two_std_threshold_is_strict() -> None:
    # Positives: 99 ones and one 10. mu = 1.09, sigma = sqrt((99 * 0.09^2 + 8.91^2) / 100) = 0.8955,
    # threshold = 2.881: only the 10 goes. A constant map has sigma 0 and every pixel equal to the
    # threshold, so the strict ">" masks nothing.
    heat = torch.ones(2, 10, 10)
    heat[0, 9, 9] = 10
    mask = threshold_masks(heat)
    assert mask[0].view(-1).nonzero().view(-1).tolist() == [99]
    assert not mask[1].any()


def test_mean_plus_two_std_matches_the_reference_formula_on_random_maps() -> None:
    # The reference code: nanmean / nanstd over the positive pixels, then heat > mu + 2 sigma.
    gen = torch.Generator().manual_seed(0)
    heat = torch.randn(16, 12, 12, generator=gen, dtype=torch.float64) ** 3
    positive = np.where(heat.numpy() > 0, heat.numpy(), np.nan)
    threshold = np.nanmean(positive, axis=(1, 2)) + 2 * np.nanstd(positive, axis=(1, 2))
    expected = heat.numpy() > threshold[:, None, None]
    assert np.array_equal(threshold_masks(heat).numpy(), expected)
    assert expected.any(axis=(1, 2)).all()


def test_map_without_positive_pixels_gives_an_empty_mask() -> None:
    heat = torch.stack([torch.zeros(6, 6), -torch.rand(6, 6)])
    assert not threshold_masks(heat).any()
    assert not threshold_masks(heat, "topk", 20).any()


def test_topk_takes_the_hottest_pixels() -> None:
    heat = torch.randperm(100, generator=torch.Generator().manual_seed(0)).float().view(1, 10, 10) + 1
    mask = threshold_masks(heat, "topk", topk_percent=10)
    assert mask.sum() == 10
    assert set(heat[mask].tolist()) == set(range(91, 101))


def test_topk_breaks_ties_by_position_and_skips_zero_heat() -> None:
    flat = threshold_masks(torch.ones(1, 10, 10), "topk", topk_percent=5).view(-1)
    assert flat.nonzero().view(-1).tolist() == [0, 1, 2, 3, 4]
    heat = torch.zeros(1, 10, 10)
    heat[0, 9, 7:] = 0.5  # 3 positive pixels, fewer than the 20 asked for
    assert threshold_masks(heat, "topk", topk_percent=20).sum() == 3


def test_threshold_rule_errors_name_their_field() -> None:
    with pytest.raises(ConfigError) as err:
        threshold_masks(torch.rand(1, 4, 4), "median")
    assert err.value.field == "threshold_rule"
    with pytest.raises(ConfigError) as err:
        threshold_masks(torch.rand(1, 4, 4), "topk", topk_percent=0)
    assert err.value.field == "topk_percent"


def _masks_with_areas(areas: list[int], size: int = 28) -> torch.Tensor:
    masks = torch.zeros(len(areas), size * size, dtype=torch.bool)
    for i, area in enumerate(areas):
        masks[i, torch.randperm(size * size, generator=torch.Generator().manual_seed(i))[:area]] = True
    return masks.view(-1, size, size)


def test_random_masks_keep_each_area_as_one_near_square_block() -> None:
    areas = [0, 1, 7, 30, 97, 400, 784]
    rand = random_masks_like(_masks_with_areas(areas), torch.Generator().manual_seed(0))
    assert rand.dtype == torch.bool and rand.shape == (len(areas), 28, 28)
    assert rand.flatten(1).sum(dim=1).tolist() == areas
    for mask, area in zip(rand, areas, strict=True):
        if area == 0:
            continue
        _, components = ndimage.label(mask.numpy())
        assert components == 1
        rows, cols = mask.nonzero().T
        height, width = int(rows.max() - rows.min()) + 1, int(cols.max() - cols.min()) + 1
        assert abs(height - width) <= 1


def test_random_masks_fit_a_wide_image() -> None:
    masks = torch.zeros(3, 4, 40, dtype=torch.bool)
    masks[0, :, :30] = True  # area 120 > 4 rows of ceil(sqrt(120)) = 11
    masks[1, 0, 0] = True
    rand = random_masks_like(masks, torch.Generator().manual_seed(3))
    assert rand.flatten(1).sum(dim=1).tolist() == [120, 1, 0]


def test_random_masks_are_seeded() -> None:
    masks = _masks_with_areas([20, 50, 9, 33])
    first = random_masks_like(masks, torch.Generator().manual_seed(7))
    again = random_masks_like(masks, torch.Generator().manual_seed(7))
    other = random_masks_like(masks, torch.Generator().manual_seed(8))
    assert torch.equal(first, again)
    assert not torch.equal(first, other)


def _images() -> tuple[torch.Tensor, torch.Tensor]:
    images = torch.randint(
        1, 256, (2, 3, 16, 16), dtype=torch.uint8, generator=torch.Generator().manual_seed(0)
    )
    masks = torch.zeros(2, 16, 16, dtype=torch.bool)
    masks[0, 2:6, 3:9] = True
    masks[1, 10:, :4] = True
    return images, masks


def test_black_fill_zeroes_masked_pixels_only() -> None:
    images, masks = _images()
    out = apply_masks(images, masks)
    hidden = masks[:, None].expand_as(images)
    assert out.dtype == torch.uint8
    assert (out[hidden] == 0).all()
    assert torch.equal(out[~hidden], images[~hidden])
    assert images.min() > 0  # the input was not modified in place


def test_mean_fill_uses_the_dataset_colour() -> None:
    images, masks = _images()
    out = apply_masks(images, masks, "mean", mean=(0.5, 0.25, 1.0))
    for channel, value in enumerate((128, 64, 255)):
        assert (out[:, channel][masks] == value).all()
    assert torch.equal(out[:, 0][~masks], images[:, 0][~masks])


def test_blur_fill_takes_the_blurred_pixels() -> None:
    checker = ((torch.arange(16)[:, None] + torch.arange(16)[None, :]) % 2 * 255).to(torch.uint8)
    images = checker.expand(1, 3, 16, 16).clone()
    masks = torch.zeros(1, 16, 16, dtype=torch.bool)
    masks[0, 4:12, 4:12] = True
    out = apply_masks(images, masks, "blur")
    inner = out[0, :, 4:12, 4:12].float()
    assert ((inner - 127.5).abs() < 40).all()  # a blurred checkerboard is mid-grey
    assert torch.equal(out[0][:, ~masks[0]], images[0][:, ~masks[0]])


def test_swap_fill_takes_the_previous_images_pixels() -> None:
    images = torch.stack([torch.full((3, 8, 8), v, dtype=torch.uint8) for v in (10, 20, 30)])
    masks = torch.zeros(3, 8, 8, dtype=torch.bool)
    masks[:, 1:3, 2:5] = True
    out = apply_masks(images, masks, "swap")
    for i, donor in enumerate((30, 10, 20)):  # image 0 takes the last one's pixels
        assert (out[i][:, masks[i]] == donor).all()
        assert (out[i][:, ~masks[i]] == images[i, 0, 0, 0]).all()
    single = apply_masks(images[:1], masks[:1], "swap")
    assert torch.equal(single, images[:1])  # a batch of one has no other image


def test_transplant_fill_blacks_out_and_pastes_the_previous_images_masked_pixels() -> None:
    images = torch.stack([torch.full((3, 8, 8), v, dtype=torch.uint8) for v in (10, 20, 30)])
    masks = torch.zeros(3, 8, 8, dtype=torch.bool)
    masks[0, 0:2, 0:2] = True  # image 0's salient corner goes to image 1
    masks[1, 5:7, 5:7] = True
    masks[2, 0:2, 6:8] = True
    out = apply_masks(images, masks, "transplant")
    for i, donor in enumerate((2, 0, 1)):
        pasted, own = masks[donor], masks[i] & ~masks[donor]
        assert (out[i][:, pasted] == images[donor, 0, 0, 0]).all()
        assert (out[i][:, own] == 0).all()
        untouched = ~(masks[i] | masks[donor])
        assert (out[i][:, untouched] == images[i, 0, 0, 0]).all()
    assert torch.equal(apply_masks(images[:1], masks[:1], "transplant"), images[:1])


def test_unknown_fill_is_a_config_error() -> None:
    images, masks = _images()
    with pytest.raises(ConfigError) as err:
        apply_masks(images, masks, "noise")
    assert err.value.field == "fill"


def test_save_and_load_round_trip_bit_packed(tmp_path: Path) -> None:
    masks = torch.rand(50, 28, 28, generator=torch.Generator().manual_seed(0)) > 0.9
    path = tmp_path / "masks" / "train.npz"
    save_masks(path, masks)
    assert [p.name for p in path.parent.iterdir()] == ["train.npz"]
    loaded = load_masks(path)
    assert loaded.dtype == torch.bool and torch.equal(loaded, masks)
    # 98 bytes a mask (784 bits) before compression, plus the zip's few hundred bytes of headers.
    assert path.stat().st_size <= 50 * 98 + 600
    with np.load(path) as data:
        assert data["bits"].shape == (50, 98)


def test_load_masks_rejects_other_files(tmp_path: Path) -> None:
    bad = tmp_path / "bad.npz"
    bad.write_bytes(b"not a zip")
    with pytest.raises(DataError) as err:
        load_masks(bad)
    assert err.value.path == str(bad)
    with pytest.raises(DataError):
        load_masks(tmp_path / "absent.npz")


def test_compute_masks_streams_batches_and_matches_one_pass() -> None:
    torch.manual_seed(0)
    model = build_model("small-cnn", 2, 1, 28, [0.5], [0.25]).eval()
    images = torch.randint(0, 256, (10, 1, 28, 28), dtype=torch.uint8)
    calls: list[tuple[int, int]] = []
    masks, probs = compute_masks(
        model, images, batch_size=4, device="cpu", progress=lambda d, t: calls.append((d, t))
    )
    assert calls == [(4, 10), (8, 10), (10, 10)]
    assert masks.dtype == torch.bool and masks.shape == (10, 28, 28) and masks.device.type == "cpu"
    expected = threshold_masks(compute_heatmaps(model, images.float() / 255))
    assert torch.equal(masks, expected)
    assert masks.any()
    # The probabilities come from the CAM's own forward pass and equal a separate prediction.
    direct = predict_probs(model, images, batch_size=4, device=torch.device("cpu"))
    assert probs.dtype == np.float32 and probs.shape == (10, 2)
    np.testing.assert_allclose(probs, direct, rtol=0, atol=1e-6)


@pytest.mark.parametrize("method", ["gradcam++", "xgradcam"])
def test_compute_masks_probs_match_a_forward_on_both_cam_paths(method: str) -> None:
    torch.manual_seed(1)
    model = build_model("small-cnn", 3, 1, 28, [0.5], [0.25]).eval()
    images = torch.randint(0, 256, (6, 1, 28, 28), dtype=torch.uint8)
    _, probs = compute_masks(model, images, method=method, batch_size=4, device="cpu")
    direct = predict_probs(model, images, batch_size=4, device=torch.device("cpu"))
    np.testing.assert_allclose(probs, direct, rtol=0, atol=1e-6)


def test_masks_saved_in_batches_equal_one_save_and_read_back_packed(tmp_path: Path) -> None:
    masks = torch.rand(23, 9, 7, generator=torch.Generator().manual_seed(1)) > 0.7
    whole, parts = tmp_path / "whole.npz", tmp_path / "parts.npz"
    save_masks(whole, masks)
    save_masks(parts, iter(masks.split(5)), (23, 9, 7))
    assert torch.equal(load_masks(parts), masks) and torch.equal(load_masks(whole), masks)
    packed = load_packed_masks(parts)
    index = torch.tensor([22, 0, 5, 5])
    assert torch.equal(packed[index], masks[index])
    assert torch.equal(packed.areas(chunk=4), masks.flatten(1).sum(1))
    # Fewer batches than promised: an error, and no file left behind.
    with pytest.raises(ValueError):
        save_masks(tmp_path / "short.npz", iter(masks[:10].split(5)), (23, 9, 7))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["parts.npz", "whole.npz"]


def test_random_blocks_read_in_batches_equal_random_masks_like() -> None:
    masks = torch.rand(30, 12, 10, generator=torch.Generator().manual_seed(2)) > 0.8
    expected = random_masks_like(masks, torch.Generator().manual_seed(5))
    blocks = RandomBlocks(masks.flatten(1).sum(1), (12, 10), torch.Generator().manual_seed(5))
    joined = torch.cat([blocks[index] for index in torch.arange(30).split(7)])
    assert torch.equal(joined, expected)


def test_iter_masks_on_a_share_of_the_batches_equals_the_whole() -> None:
    torch.manual_seed(0)
    model = build_model("small-cnn", 2, 1, 28, [0.5], [0.25]).eval()
    images = torch.randint(0, 256, (10, 1, 28, 28), dtype=torch.uint8)
    whole = compute_masks(model, images, batch_size=3)
    shares = [list(iter_masks(model, images, batch_size=3, batches=rows)) for rows in (range(2), range(2, 4))]
    batches = shares[0] + shares[1]
    assert torch.equal(torch.cat([b.masks for b in batches]), whole.masks)
    # Each batch carries the probabilities of its own rows.
    np.testing.assert_array_equal(np.concatenate([b.probs for b in batches]), whole.probs)


def test_heatmaps_stay_fp32_under_a_bf16_autocast() -> None:
    # Training runs under bf16 autocast on CUDA; the CAM fast path must not inherit it.
    torch.manual_seed(0)
    model = build_model("small-cnn", 2, 1, 28, [0.5], [0.25]).eval()
    images = torch.rand(4, 1, 28, 28)
    plain = compute_heatmaps(model, images)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        inside = compute_heatmaps(model, images)
    assert inside.dtype == torch.float32 and torch.equal(inside, plain)
