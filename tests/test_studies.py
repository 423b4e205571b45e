"""Seed studies (masktune_core/studies.py): finding a study, its statistics, its verdict, the CLI."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from masktune_core import studies
from masktune_core.__main__ import main
from masktune_core.config import RunConfig
from masktune_core.errors import ConfigError, RunStoreError
from masktune_core.runs import Run, RunStore, write_json


def fake_run(
    store: RunStore,
    seed: int,
    erm: float,
    masktune: float,
    *,
    study: str = "s1",
    dataset: str = "biased-digits",
) -> Run:
    """A finished run whose metrics hold the given worst-group accuracies (accuracy = value + 0.1)."""
    config = RunConfig.from_dict({"dataset": dataset, "seed": seed, "study": study, "name": f"x{seed}"})
    run = store.create(config.resolved().to_dict())
    run.update_status(state="done", stages_done=["erm", "masks_1", "finetune_1", "evaluate"])

    def model(value: float) -> dict:
        return {
            "accuracy": value + 0.1,
            "worst_group_accuracy": value,
            "per_class": {"a": {"accuracy": value + 0.05, "n": 5}, "b": {"accuracy": value + 0.2, "n": 5}},
            "per_group": {"g0": {"accuracy": value, "n": 3}, "g1": {"accuracy": value + 0.2, "n": 7}},
        }

    splits = {split: {"erm": model(erm), "masktune": model(masktune)} for split in ("val", "test_biased")}
    write_json(run.file("metrics.json"), {"splits": splits, "main_test_split": "test_biased"})
    return run


@pytest.fixture
def store(tmp_path: Path) -> RunStore:
    return RunStore(tmp_path / "runs")


def test_summary_gives_mean_sample_std_points_and_paired_t_interval(store: RunStore) -> None:
    for seed, (erm, mt) in enumerate([(0.40, 0.50), (0.30, 0.45), (0.50, 0.55)]):
        fake_run(store, seed, erm, mt)
    summary = studies.summarize(studies.study_runs(store, "s1"))
    wga = summary["splits"]["test_biased"]["worst_group_accuracy"]
    assert summary["seeds"] == [0, 1, 2] and summary["n_seeds"] == 3
    assert wga["erm"]["values"] == pytest.approx([0.40, 0.30, 0.50])
    assert wga["erm"]["mean"] == pytest.approx(0.40)
    assert wga["erm"]["std"] == pytest.approx(0.1)  # sample std (ddof=1); the population std is 0.0816
    diff = wga["difference"]
    assert diff["values"] == pytest.approx([0.10, 0.15, 0.05])
    half = 4.302652729911275 * 0.05 / math.sqrt(3)  # t(0.975, 2) * s / sqrt(n)
    assert diff["interval"] == pytest.approx([0.10 - half, 0.10 + half])
    worst_class = summary["splits"]["val"]["worst_class_accuracy"]["erm"]["values"]
    assert worst_class == pytest.approx([0.45, 0.35, 0.55])


def test_verdict_over_seeds_says_helped_hurt_or_unclear(store: RunStore) -> None:
    for seed, (erm, mt) in enumerate([(0.40, 0.50), (0.30, 0.41), (0.50, 0.59)]):
        fake_run(store, seed, erm, mt, study="up")
    for seed, (erm, mt) in enumerate([(0.50, 0.40), (0.41, 0.30), (0.59, 0.50)]):
        fake_run(store, seed, erm, mt, study="down")
    for seed, (erm, mt) in enumerate([(0.40, 0.50), (0.50, 0.40)]):
        fake_run(store, seed, erm, mt, study="flat")
    labels = {
        s: studies.study_verdict(studies.summarize(studies.study_runs(store, s)))
        for s in ("up", "down", "flat")
    }
    assert labels["up"]["label"] == "helped" and labels["up"]["recommendation"] == "masktune"
    assert labels["down"]["label"] == "hurt" and labels["down"]["recommendation"] == "erm"
    assert labels["flat"]["label"] == "no clear difference"
    assert labels["up"]["metric"] == "worst_group_accuracy" and labels["up"]["split"] == "val"


def test_one_seed_has_no_spread_and_no_study_verdict(store: RunStore) -> None:
    fake_run(store, 0, 0.4, 0.5)
    summary = studies.summarize(studies.study_runs(store, "s1"))
    values = summary["splits"]["val"]["worst_group_accuracy"]["difference"]
    assert values["std"] is None and values["interval"] is None
    assert studies.study_verdict(summary) is None
    assert any("one seed" in line for line in studies.summary_lines(summary))


def test_mixing_datasets_or_settings_is_refused(store: RunStore) -> None:
    a = fake_run(store, 0, 0.4, 0.5, study="a")
    b = fake_run(store, 1, 0.4, 0.5, study="a", dataset="digits")
    with pytest.raises(ConfigError, match="dataset"):
        studies.summarize([a, b])
    c = fake_run(store, 2, 0.4, 0.5, study="c")
    config = c.config()
    config["finetune_lr"] = 0.5
    write_json(c.file("config.json"), config)
    with pytest.raises(ConfigError, match="finetune_lr"):
        studies.check_one_setup([a, c])


def test_unfinished_runs_are_left_out_and_listed(store: RunStore) -> None:
    fake_run(store, 0, 0.4, 0.5)
    late = fake_run(store, 1, 0.4, 0.5)
    late.update_status(state="interrupted")
    summary = studies.summarize(studies.study_runs(store, "s1"))
    assert summary["missing"] == [late.id] and summary["n_seeds"] == 1


def test_resolve_takes_run_and_study_ids_and_names_an_unknown_one(store: RunStore) -> None:
    runs = [fake_run(store, s, 0.4, 0.5) for s in (0, 1)]
    assert [r.id for r in studies.resolve(store, ["s1"])] == [r.id for r in runs]
    assert [r.id for r in studies.resolve(store, [runs[1].id])] == [runs[1].id]
    with pytest.raises(RunStoreError, match="nope"):
        studies.resolve(store, ["nope"])


def test_seed_configs_share_everything_but_the_seed() -> None:
    base = RunConfig.from_dict({"epochs": 2, "name": "demo"}).resolved()
    configs = studies.seed_configs(base, studies.parse_seeds("3, 1"))
    assert [c.seed for c in configs] == [3, 1]
    assert len({c.study for c in configs}) == 1 and configs[0].study.startswith("study-")
    assert all(c.epochs == 2 for c in configs)
    for bad in ("", "1,x", "1,1", ",".join(str(i) for i in range(30))):
        with pytest.raises(ConfigError, match="seeds"):
            studies.parse_seeds(bad)


def test_show_prints_the_study_summary(store: RunStore, capsys: pytest.CaptureFixture[str]) -> None:
    for seed in (0, 1, 2):
        fake_run(store, seed, 0.4, 0.5 + seed / 100)
    assert main(["show", "s1", "--runs-dir", str(store.root)]) == 0
    out = capsys.readouterr().out
    assert "3 finished seeds" in out and "test_biased" in out
    assert "MaskTune − ERM +11.0 pp" in out  # mean of 0.10, 0.11, 0.12 on worst-group accuracy
    assert "sample standard deviation" in out


def test_run_with_bad_seeds_fails_on_one_line_without_a_run(
    store: RunStore, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["run", "--seeds", "0,zero", "--runs-dir", str(store.root)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "seeds" in err[0]
    assert store.list() == []
