"""The suite's datasets: one table of specs, and the deterministic generator that writes them.

Each dataset is a binary task with a binary cue. In train the cue agrees with the label on exactly
``correlation`` of each class's images; in val and test every (label, cue) group holds a quarter of the
split. A dataset folder is written beside its destination and renamed into place only when complete.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from bench.suite.cues import RENDERERS
from bench.suite.formats import LAYOUTS, SPLITS, SplitData
from bench.suite.sources import SIZE, Pool, digits_pools, fashion_pools
from masktune_core.errors import ConfigError

DEFAULT_SIZES = {"train": 4000, "val": 1000, "test": 2000}
CARD = "card.json"


@dataclass(frozen=True)
class Spec:
    """One suite dataset. ``source`` is "fashion:A,B" (Fashion-MNIST classes A vs B) or "digits:T"
    (digits >= T vs the rest); ``cues`` names what cue 0 and cue 1 look like."""

    name: str
    source: str
    classes: tuple[str, str]
    difficulty: str
    cue: str  # a RENDERERS key
    cues: tuple[str, str]
    layout: str  # a LAYOUTS key
    correlation: float
    seed: int


SPECS = (
    Spec(
        "patch-digits",
        "digits:5",
        ("digits 0-4", "digits 5-9"),
        "medium: five digit shapes per class, from 8x8 scans",
        "corner-patch",
        ("no square", "red 4x4 square in the top-left corner"),
        "imagefolder",
        0.99,
        101,
    ),
    Spec(
        "tint-fashion",
        "fashion:0,6",
        ("T-shirt/top", "shirt"),
        "hard: Fashion-MNIST's most confused pair",
        "colour-tint",
        ("warm (orange) cast over the whole image", "cool (blue) cast over the whole image"),
        "celeba",
        0.90,
        102,
    ),
    Spec(
        "background-fashion",
        "fashion:7,9",
        ("sneaker", "ankle boot"),
        "medium-easy: similar footwear shapes",
        "background",
        ("land texture (diagonal earth-tone stripes)", "water texture (blue waves)"),
        "waterbirds",
        0.97,
        103,
    ),
    Spec(
        "colour-coats",
        "fashion:2,4",
        ("pullover", "coat"),
        "hard: the same silhouette, told apart by openings and buttons",
        "object-colour",
        ("the object itself is orange", "the object itself is light blue"),
        "waterbirds",
        0.95,
        104,
    ),
    Spec(
        "mark-coats",
        "fashion:2,4",
        ("pullover", "coat"),
        "hard: the same silhouette, told apart by openings and buttons",
        "object-mark",
        ("an orange 5x5 mark printed on the object", "a light-blue 5x5 mark printed on the object"),
        "waterbirds",
        0.95,
        104,
    ),
)


def parse_sizes(text: str) -> dict[str, int]:
    """``"train,val,test"`` counts; each a positive multiple of 4 so every split can balance its groups."""
    parts = text.split(",")
    try:
        sizes = [int(part) for part in parts]
    except ValueError:
        sizes = []
    if len(sizes) != 3 or any(size <= 0 or size % 4 for size in sizes):
        raise ConfigError("sizes", f"expected three positive multiples of 4 as train,val,test, got {text!r}")
    return dict(zip(SPLITS, sizes, strict=True))


def _pools(spec: Spec) -> dict[str, Pool]:
    kind, _, argument = spec.source.partition(":")
    if kind == "fashion":
        first, second = (int(value) for value in argument.split(","))
        return fashion_pools((first, second))
    return digits_pools(int(argument), spec.seed)


def _draw(pools: dict[str, Pool], sizes: dict[str, int], rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Row indices per split, half of each split per class; splits sharing a pool get disjoint rows."""
    taken: dict[tuple[int, int], int] = {}  # (pool id, label) -> rows already handed out
    order: dict[tuple[int, int], np.ndarray] = {}
    rows = {}
    for split in SPLITS:
        pool, per_class = pools[split], sizes[split] // 2
        chosen = []
        for label in (0, 1):
            key = (id(pool), label)
            if key not in order:
                order[key] = rng.permutation(np.flatnonzero(pool.labels == label))
            start = taken.get(key, 0)
            if start + per_class > len(order[key]):
                left = len(order[key]) - start
                raise ConfigError(
                    "sizes", f"{split} needs {per_class} images of class {label}; {left} are left"
                )
            chosen.append(order[key][start : start + per_class])
            taken[key] = start + per_class
        rows[split] = np.concatenate(chosen)
    return rows


def _cues(labels: np.ndarray, correlation: float | None, rng: np.random.Generator) -> np.ndarray:
    """Cue per image: ``correlation`` of each class gets the cue equal to its label; None: half of each
    class gets cue 0 and half cue 1."""
    cues = np.empty(len(labels), dtype=np.int64)
    for label in (0, 1):
        rows = rng.permutation(np.flatnonzero(labels == label))
        if correlation is None:
            half = len(rows) // 2
            cues[rows[:half]], cues[rows[half:]] = 0, 1
        else:
            agree = round(correlation * len(rows))
            cues[rows[:agree]], cues[rows[agree:]] = label, 1 - label
    return cues


def build_splits(spec: Spec, sizes: dict[str, int]) -> dict[str, SplitData]:
    rng = np.random.default_rng(spec.seed)
    pools = _pools(spec)
    rows = _draw(pools, sizes, rng)
    out = {}
    for split in SPLITS:
        pool = pools[split]
        shuffled = rows[split][rng.permutation(len(rows[split]))]
        labels = pool.labels[shuffled]
        cues = _cues(labels, spec.correlation if split == "train" else None, rng)
        images = RENDERERS[spec.cue](pool.images[shuffled], cues, rng)
        out[split] = SplitData(images, labels, cues)
    return out


def card(spec: Spec, sizes: dict[str, int], splits: dict[str, SplitData]) -> dict:
    """What the dataset is, measured from what was written: counts per group and the train correlation."""
    groups = {
        split: [int(np.sum(2 * data.labels + data.cues == group)) for group in range(4)]
        for split, data in splits.items()
    }
    train = splits["train"]
    return {
        "name": spec.name,
        "dataset": LAYOUTS[spec.layout][1],
        "spec": {**asdict(spec), "sizes": sizes, "image_size": SIZE},
        "label_0": spec.classes[0],
        "label_1": spec.classes[1],
        "cue_0": spec.cues[0],
        "cue_1": spec.cues[1],
        "group": "2 * label + cue",
        "train_correlation": float(np.mean(train.labels == train.cues)),
        "group_counts": groups,
    }


def readme(info: dict) -> str:
    spec = info["spec"]
    counts = "\n".join(
        f"  {split}: {sum(groups)} images; groups 0-3 = {groups}"
        for split, groups in info["group_counts"].items()
    )
    return (
        f"{info['name']}: a binary task with a spurious cue, in the product's {spec['layout']} layout.\n"
        f"Run it: python -m masktune_core run --dataset {info['dataset']} --data-dir THIS_FOLDER "
        f"--backbone small-cnn --image-size {spec['image_size']}\n\n"
        f"Task ({spec['difficulty']}): label 0 = {info['label_0']}, label 1 = {info['label_1']}; "
        f"source {spec['source']}.\n"
        f"Cue ({spec['cue']}): cue 0 = {info['cue_0']}; cue 1 = {info['cue_1']}.\n"
        f"Train: the cue equals the label on {info['train_correlation']:.1%} of the images "
        f"(exactly {spec['correlation']:.0%} of each class). Val and test: the four groups are balanced.\n"
        f"Groups: {info['group']}; RGB PNG, {spec['image_size']}x{spec['image_size']} px; "
        f"seed {spec['seed']}.\n"
        f"{counts}\n"
    )


def _replace_dir(built: Path, target: Path) -> None:
    """Swap ``built`` in for ``target``: the old folder is moved aside first, so a reader never sees a mix."""
    old = None
    if target.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{target.name}.old-", dir=target.parent))
        os.replace(target, old / target.name)
    os.replace(built, target)
    if old is not None:
        shutil.rmtree(old)


def generate(spec: Spec, out: Path, sizes: dict[str, int], force: bool = False) -> tuple[Path, bool]:
    """Write ``out/spec.name``; returns (folder, whether it was written). A folder whose card matches the
    spec and sizes is kept unless ``force``."""
    target = out / spec.name
    expected = {**asdict(spec), "sizes": sizes, "image_size": SIZE}
    if not force and (target / CARD).is_file():
        existing = json.loads((target / CARD).read_text(encoding="utf-8"))
        if json.loads(json.dumps(existing.get("spec"))) == json.loads(json.dumps(expected)):
            return target, False
    splits = build_splits(spec, sizes)  # before any folder is made: bad sizes leave nothing behind
    out.mkdir(parents=True, exist_ok=True)
    building = Path(tempfile.mkdtemp(prefix=f".{spec.name}.new-", dir=out))
    try:
        LAYOUTS[spec.layout][0](building, splits, spec.classes)
        info = card(spec, sizes, splits)
        (building / CARD).write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
        (building / "README.txt").write_text(readme(info), encoding="utf-8")
        building.chmod(0o755)  # mkdtemp makes it private; the data is for anyone on the machine
        _replace_dir(building, target)
    except BaseException:
        shutil.rmtree(building, ignore_errors=True)
        raise
    return target, True


def read_card(folder: Path) -> dict:
    return json.loads((folder / CARD).read_text(encoding="utf-8"))
