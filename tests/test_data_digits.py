"""The bundled digits set, the biased-square protocol over it, and the registry entries."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from masktune_core.data import DATASETS, DataOptions, build_dataset, dataset_availability, dataset_names
from masktune_core.data.biased import MARGIN, square_slices
from masktune_core.data.digits import affine_copies, load_digits_arrays
from masktune_core.data.imageio import channel_stats, seeded_generator, stratified_split
from masktune_core.errors import ConfigError
from masktune_core.recipes import RECIPE_KEYS

FAST = DataOptions(train_copies=1)


@pytest.fixture(scope="module")
def digits():
    return build_dataset("digits", FAST)


@pytest.fixture(scope="module")
def biased():
    return build_dataset("biased-digits", FAST)


def test_registry_lists_every_dataset_with_a_recipe():
    expected = {
        "digits",
        "biased-digits",
        "biased-mnist",
        "biased-fashion-mnist",
        "mnist",
        "fashion-mnist",
        "cifar10",
        "svhn",
        "waterbirds",
        "celeba",
        "imagefolder",
    }
    assert expected <= set(dataset_names())
    for name in expected:
        assert set(DATASETS[name].recipe.as_dict()) <= set(RECIPE_KEYS), name
        assert DATASETS[name].recipe.backbone, name
    assert dataset_availability("biased-digits", DataOptions())[0]


def test_fast_reader_matches_load_digits():
    from sklearn.datasets import load_digits

    images, labels = load_digits_arrays()
    reference = load_digits()
    np.testing.assert_array_equal(images, reference.images)
    np.testing.assert_array_equal(labels, reference.target)


def test_digits_splits(digits):
    train, val, test = digits.splits["train"], digits.splits["val"], digits.splits["test"]
    for split in (train, val, test):
        assert split.images.dtype == torch.uint8
        assert split.images.shape[1:] == (3, 28, 28)
        assert torch.equal(split.images[:, 0], split.images[:, 1])  # grey digits stored as RGB
        assert split.groups is None
    _, labels = load_digits_arrays()
    counts = np.bincount(labels)
    assert len(test) == sum(round(0.3 * n) for n in counts)
    # train and val hold originals + one affine copy each; the three splits partition the 1,797 scans.
    assert len(train) % 2 == 0 and len(val) % 2 == 0
    assert len(train) // 2 + len(val) // 2 + len(test) == len(labels)
    half = len(train) // 2
    assert torch.equal(train.labels[:half], train.labels[half:])
    assert not torch.equal(train.images[:half], train.images[half:])
    assert int(train.images.max()) == 255
    assert digits.augment == "affine" and digits.main_test_split == "test"
    assert digits.mean == pytest.approx(channel_stats(train.images)[0])


def test_digits_options():
    bundle = build_dataset("digits", DataOptions(train_copies=0, image_size=16, seed=3))
    assert bundle.image_size == 16
    assert len(bundle.splits["train"]) + len(bundle.splits["val"]) + len(bundle.splits["test"]) == 1797
    with pytest.raises(ConfigError) as err:
        build_dataset("digits", DataOptions(train_copies=-1))
    assert err.value.field == "train_copies"
    with pytest.raises(ConfigError) as err:
        build_dataset("digits", DataOptions(image_size=0))
    assert err.value.field == "image_size"


@pytest.mark.parametrize("size", [28, 16])
def test_digits_sit_in_a_centred_box_with_a_black_border(size):
    test = build_dataset("digits", DataOptions(train_copies=0, image_size=size)).splits["test"].images
    box = round(size * 20 / 28)
    start = (size - box) // 2
    inside = test[:, :, start : start + box, start : start + box]
    assert int(inside.sum()) == int(test.sum()) > 0  # every stroke lies in the box
    # ...and the box is filled: some digit touches its top row and its left column.
    assert int(inside[:, :, 0].max()) > 0 and int(inside[:, :, :, 0].max()) > 0


def test_biased_square_lies_on_the_background_corner(biased):
    """The square sits where digits rarely reach, so a mask over it erases little of the digit.

    Digits filling the whole frame put 0.66 of their mean brightness under the square; the 20 px box, 0.09.
    """
    rows, cols = square_slices(28, FAST.square_size, FAST.square_position)
    original = biased.splits["test_original"].images.float()
    assert float(original[:, :, rows, cols].mean()) < 0.15 * float(original.mean())


def test_affine_copies_move_but_keep_the_digit():
    images = torch.zeros(2, 1, 28, 28)
    images[:, :, 8:20, 12:16] = 255.0
    copies = affine_copies(images, 3, seeded_generator(0, "test"))
    assert copies.shape == (6, 1, 28, 28)
    moved = (copies - images.repeat(3, 1, 1, 1)).abs().sum(dim=(1, 2, 3))
    assert bool((moved > 0).all())
    mass = copies.sum(dim=(1, 2, 3)) / images[0].sum()
    assert bool(((mass > 0.7) & (mass < 1.3)).all())


def test_stratified_split_takes_the_rounded_share_of_each_class():
    labels = torch.tensor([0] * 10 + [1] * 30)
    kept, taken = stratified_split(labels, 0.25, seeded_generator(0, "test"))
    assert torch.bincount(labels[taken]).tolist() == [2, 8]  # round(2.5) == 2, round(7.5) == 8
    assert sorted(torch.cat([kept, taken]).tolist()) == list(range(40))


def _square_present(images: torch.Tensor, options: DataOptions) -> torch.Tensor:
    rows, cols = square_slices(images.shape[-1], options.square_size, options.square_position)
    color = torch.tensor(options.square_color, dtype=torch.uint8).view(1, 3, 1, 1)
    return (images[:, :, rows, cols] == color).flatten(1).all(dim=1)


def _outside_square(images: torch.Tensor, options: DataOptions) -> torch.Tensor:
    rows, cols = square_slices(images.shape[-1], options.square_size, options.square_position)
    kept = images.clone()
    kept[:, :, rows, cols] = 0
    return kept


def test_biased_protocol(digits, biased):
    options = FAST
    assert biased.class_names == ["0-4", "5-9"]
    assert biased.test_splits == ["test_original", "test_biased"] and biased.main_test_split == "test_biased"
    assert biased.group_names == ["0-4 / no square", "0-4 / square", "5-9 / no square", "5-9 / square"]
    assert biased.augment == digits.augment
    for name in ("train", "val"):
        base, split = digits.splits[name], biased.splits[name]
        assert torch.equal(split.labels, (base.labels >= 5).long())
        present = _square_present(split.images, options)
        assert torch.equal(split.groups, 2 * split.labels + present.long())
        n0, n1 = int((split.labels == 0).sum()), int((split.labels == 1).sum())
        assert int(present[split.labels == 0].sum()) == round(0.99 * n0)
        assert int(present[split.labels == 1].sum()) == round(0.01 * n1)
        # Only the square's pixels change, and only on the chosen images.
        assert torch.equal(_outside_square(split.images, options), _outside_square(base.images, options))
        assert torch.equal(split.images[~present], base.images[~present])

    base_test = digits.splits["test"]
    original, flipped = biased.splits["test_original"], biased.splits["test_biased"]
    assert torch.equal(original.images, base_test.images)
    assert not bool(_square_present(original.images, options).any())
    assert torch.equal(original.groups, 2 * original.labels)
    assert torch.equal(_square_present(flipped.images, options), flipped.labels == 1)
    assert torch.equal(flipped.groups, 3 * flipped.labels)


def test_biased_square_options():
    options = DataOptions(
        train_copies=0,
        square_size=4,
        square_color=(0, 200, 10),
        square_position="bottom-right",
        bias_ratio=1.0,
    )
    bundle = build_dataset("biased-digits", options)
    train = bundle.splits["train"]
    class0 = train.images[train.labels == 0]
    corner = slice(28 - MARGIN - 4, 28 - MARGIN)  # a 4 px square MARGIN px from the bottom-right corner
    assert bool((class0[:, :, corner, corner] == torch.tensor([0, 200, 10]).view(1, 3, 1, 1)).all())
    assert not bool(
        _square_present(train.images[train.labels == 1], options).any()
    )  # ratio 1: none on class 1


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("square_size", 0),
        ("square_size", 15),
        ("bias_ratio", 0.4),
        ("bias_ratio", 1.2),
        ("square_color", (256, 0, 0)),
        ("square_color", (1, 2)),
        ("square_position", "center"),
    ],
)
def test_biased_rejects_bad_options(field, value):
    with pytest.raises(ConfigError) as err:
        build_dataset("biased-digits", DataOptions(train_copies=0, **{field: value}))
    assert err.value.field == field


def test_biased_is_seeded(biased):
    again = build_dataset("biased-digits", FAST)
    for name, split in biased.splits.items():
        assert torch.equal(split.images, again.splits[name].images), name
        assert torch.equal(split.groups, again.splits[name].groups), name
    other = build_dataset("biased-digits", DataOptions(train_copies=1, seed=1))
    assert not torch.equal(other.splits["test_original"].labels, biased.splits["test_original"].labels)
    assert not torch.equal(other.splits["train"].images, biased.splits["train"].images)


def test_train_copies_come_from_the_recipe_unless_given():
    from masktune_core.config import RunConfig

    recipe = DATASETS["biased-digits"].recipe.train_copies
    assert recipe != DATASETS["digits"].recipe.train_copies  # biased-digits sets its own
    assert RunConfig(dataset="biased-digits").resolved().data_options().train_copies == recipe
    assert RunConfig(dataset="digits").resolved().train_copies == DATASETS["digits"].recipe.train_copies
    assert RunConfig(dataset="mnist").resolved().train_copies is None  # no copies: nothing to set
    given = RunConfig(dataset="biased-digits", train_copies=2).resolved()
    assert given.train_copies == given.data_options().train_copies == 2


def test_the_fingerprint_sees_a_pixel_a_label_and_the_order_change():
    split = build_dataset("digits", DataOptions(train_copies=0, image_size=16)).splits["train"]
    prints = {split.fingerprint}
    pixel = split.subset(torch.arange(len(split)))
    pixel.images[0, 0, 0, 0] ^= 1
    label = split.subset(torch.arange(len(split)))
    label.labels[0] = (label.labels[0] + 1) % 10
    order = split.subset(torch.arange(len(split)).flip(0))
    for changed in (pixel, label, order):
        prints.add(changed.fingerprint)
    assert len(prints) == 4
    assert split.subset(torch.arange(len(split))).fingerprint == split.fingerprint
