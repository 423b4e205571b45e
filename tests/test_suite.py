"""The spurious-correlation suite (bench/suite): generated datasets, run matching and the report page."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench.suite import runner
from bench.suite.__main__ import main
from bench.suite.check import loaded_group_counts
from bench.suite.generate import SPECS, generate, parse_sizes, read_card
from bench.suite.report import render
from bench.suite.results import erm_plateau
from bench.suite.tables import collect
from masktune_core.errors import ConfigError
from masktune_core.runs import LAST_ERM_STATE, RunStore, write_json

TINY = "40,16,24"  # per class: 20 train, 8 val, 12 test


@pytest.fixture(scope="module")
def suite_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("suite-data")
    for spec in SPECS:
        generate(spec, out, parse_sizes(TINY))
    return out


@pytest.mark.parametrize("spec", SPECS, ids=lambda spec: spec.name)
def test_generated_dataset_loads_with_the_stated_correlation_and_balanced_groups(suite_data: Path, spec):
    card = read_card(suite_data / spec.name)
    assert card["spec"]["correlation"] == spec.correlation and 0.90 <= spec.correlation <= 0.99
    agree = round(spec.correlation * 20)  # of the 20 train images per class
    expected = {"train": [agree, 20 - agree, 20 - agree, agree], "val": [4] * 4, "test": [6] * 4}
    # Read back by the product's own loader: groups 2 * label + cue in every layout.
    assert loaded_group_counts(suite_data / spec.name) == expected
    assert card["group_counts"] == expected
    assert card["train_correlation"] == pytest.approx(agree / 20)
    assert (suite_data / spec.name / "README.txt").read_text().startswith(spec.name)


def test_suite_has_four_kinds_of_cue_in_three_layouts():
    assert len({spec.cue for spec in SPECS}) >= 4
    assert {spec.layout for spec in SPECS} == {"waterbirds", "celeba", "imagefolder"}


def test_generation_is_deterministic_and_reuses_a_matching_folder(tmp_path: Path, suite_data: Path):
    spec = SPECS[0]
    folder, written = generate(spec, tmp_path, parse_sizes(TINY))
    assert written
    files = sorted(path.relative_to(folder) for path in folder.rglob("*") if path.is_file())
    reference = suite_data / spec.name
    assert files == sorted(path.relative_to(reference) for path in reference.rglob("*") if path.is_file())
    assert all((folder / name).read_bytes() == (reference / name).read_bytes() for name in files)
    assert generate(spec, tmp_path, parse_sizes(TINY)) == (folder, False)
    assert generate(spec, tmp_path, parse_sizes("40,16,28"))[1]  # other sizes: rewritten


def test_bad_sizes_exit_2_with_one_line(tmp_path: Path, capsys: pytest.CaptureFixture):
    with pytest.raises(ConfigError, match="sizes"):
        parse_sizes("40,16")
    assert main(["generate", "--out", str(tmp_path), "--sizes", "40,15,24"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "sizes" in err
    assert not any(tmp_path.iterdir())


def _epochs(losses: list[float]) -> list[dict]:
    return [
        {"stage": "erm", "kind": "epoch", "epoch": i + 1, "val_loss": loss} for i, loss in enumerate(losses)
    ]


def test_erm_plateau_finds_the_minimum_and_the_last_epoch():
    plateau = erm_plateau([{"stage": "erm", "kind": "step", "loss": 0.1}, *_epochs([0.9, 0.4, 0.5, 0.6])])
    assert (plateau.epochs, plateau.best_epoch, plateau.best_loss, plateau.last_loss) == (4, 2, 0.4, 0.6)
    assert plateau.ratio == pytest.approx(1.5)
    assert erm_plateau([]) is None


def _fake_run(store: RunStore, job: runner.Job, scores: dict, extra: dict | None = None, done: bool = True):
    run = store.create(runner.expected_config(job))
    splits = {
        split: {model: {"accuracy": acc, "worst_group_accuracy": wg} for model, (wg, acc) in models.items()}
        for split, models in scores.items()
    }
    write_json(run.file("metrics.json"), {"splits": splits, **(extra or {})})
    events = [*_epochs([0.8, 0.5, 0.55]), {"stage": "erm", "kind": "timing", "seconds": 40.0}]
    events.append({"stage": "finetune_1", "kind": "timing", "seconds": 10.0})
    events.append({"stage": "evaluate", "kind": "timing", "seconds": 2.0})
    run.file("events.jsonl").write_text("".join(json.dumps(event) + "\n" for event in events))
    run.update_status(state="done" if done else "failed")
    return run


def test_report_on_a_fake_run_store(tmp_path: Path, suite_data: Path):
    folder = suite_data / "patch-digits"
    dataset = read_card(folder)["dataset"]
    store = RunStore(tmp_path / "runs")
    verdict = {"label": "MaskTune helped", "metric": "worst_group_accuracy", "split": "val"}
    verdict |= {"erm": 0.4, "masktune": 0.6, "difference": 0.2, "interval": [0.1, 0.3]}
    candidates = [
        {
            "name": "lr-1e-3",
            "settings": {"finetune_lr": 0.001},
            "selected": True,
            "splits": {"val": {"accuracy": 0.8, "worst_group_accuracy": 0.61}},
        }
    ]
    for seed, (erm, masktune) in {10: (0.40, 0.50), 11: (0.30, 0.50)}.items():
        scores = {split: {"erm": (erm, 0.8), "masktune": (masktune, 0.85)} for split in ("val", "test")}
        extra = {"verdict": verdict, "candidates": candidates} if seed == 10 else None
        _fake_run(store, runner.Job(folder, dataset, "default", seed), scores, extra)
    # A failed run and a run of another variant are not results of the default variant.
    bad = {split: {"erm": (0.9, 0.9), "masktune": (0.9, 0.9)} for split in ("val", "test")}
    _fake_run(store, runner.Job(folder, dataset, "default", 12), bad, done=False)
    _fake_run(store, runner.Job(folder, dataset, "topk", 0), bad)

    suite = collect([folder], store.root, {"held-out": [10, 11, 12], "tuning": [0]}, ["default"])
    page = render(suite, "python -m bench.suite report")
    summary = page.split("## Summary")[1].split("\n## ")[0]
    # ERM 40, 30 -> 35.0 ± 7.1; MaskTune 50, 50 -> 50.0 ± 0.0; paired +10, +20 -> +15.0 ± 7.1.
    assert (
        "| patch-digits | corner-patch | 2 of 3 | 35.0 ± 7.1 | 50.0 ± 0.0 | +15.0 ± 7.1 | 2 of 2 |" in summary
    )
    assert "at least 5 points above it on 1" in summary
    assert (
        "MaskTune helped (worst_group_accuracy on val, ERM 0.400, MaskTune 0.600, difference +0.200, "
        "interval [+0.100, +0.300])" in page
    )
    assert "| `default` | 12 | – |" in page and "not run" in page
    assert "| `default` | 10 | lr-1e-3 | finetune_lr=0.001 | **yes** | 61.0 | 80.0 | – | – |" in page
    assert "| `default` | 10 | 3 | 0.500 (epoch 2) | 0.550 | 1.10 | 1 |" in page
    assert "52 s" in page
    assert "median 0.25× the wall time of the ERM stage that trained the run's ERM" in summary
    assert "(range 0.25–0.25×, 2 runs)" in summary
    assert "### Held-out seeds 10, 11, 12" in page and "### Tuning seeds 0" in page
    tuning = page.split("### Tuning seeds 0")[1]
    assert "| `default` | 0 | – |" in tuning  # the topk run of seed 0 is not the default variant's

    out = tmp_path / "suite.md"
    argv = ["report", "--data", str(suite_data), "--runs", str(store.root), "--datasets", "patch-digits"]
    argv += ["--held-out-seeds", "10,11,12", "--out", str(out)]
    assert main(argv) == 0
    written = out.read_text()
    assert f"Regenerate: `python -m bench.suite {' '.join(argv)}`" in written
    assert "| 35.0 ± 7.1 | 50.0 ± 0.0 | +15.0 ± 7.1 | 2 of 2 |" in written
    assert main([*argv[:-4], "--out", str(out)]) == 2  # no seeds of either role


def test_runner_reuses_finished_runs_and_runs_the_rest(tmp_path: Path, suite_data: Path, monkeypatch):
    folder = suite_data / "tint-fashion"
    jobs = runner.make_jobs([folder], [0, 1], ["default"])
    store = RunStore(tmp_path / "runs")
    scores = {split: {"erm": (0.5, 0.5), "masktune": (0.5, 0.5)} for split in ("val", "test")}
    finished = _fake_run(store, jobs[0], scores)
    launched = []
    monkeypatch.setattr(
        runner, "_execute", lambda job, runs_dir, run: launched.append(job.name) or ("done", 1.0)
    )
    outcomes = runner.run_jobs(jobs, store.root)
    assert outcomes[jobs[0].name] == f"reused {finished.id}"
    assert launched == [jobs[1].name]
    flags = jobs[1].flags()
    assert flags[flags.index("--backbone") + 1] == "small-cnn" and "--image-size" in flags
    assert runner.expected_config(jobs[1])["dataset"] == "celeba"


def test_all_generates_runs_the_missing_jobs_and_reports(tmp_path: Path, monkeypatch):
    launched = []
    monkeypatch.setattr(
        runner, "_execute", lambda job, runs_dir, run: launched.append(job.name) or ("done", 1.0)
    )
    page = tmp_path / "suite.md"
    argv = ["all", "--data", str(tmp_path / "data"), "--runs", str(tmp_path / "runs"), "--sizes", TINY]
    argv += ["--only", "patch-digits", "--tuning-seeds", "0", "--held-out-seeds", "10", "--out", str(page)]
    assert main(argv) == 0
    assert (tmp_path / "data" / "patch-digits" / "card.json").is_file()
    assert sorted(launched) == ["suite-patch-digits-default-s0", "suite-patch-digits-default-s10"]
    assert "### Held-out seeds 10" in page.read_text() and "not run" in page.read_text()


@pytest.mark.slow
def test_a_real_run_is_found_again_by_its_config(tmp_path: Path, suite_data: Path):
    """Through the product's CLI in a subprocess: the stored config must equal ``expected_config``."""
    jobs = runner.make_jobs([suite_data / "patch-digits"], [0], ["topk"])
    first = runner.run_jobs(jobs, tmp_path)
    assert first[jobs[0].name].startswith("done"), first
    second = runner.run_jobs(jobs, tmp_path)
    assert second[jobs[0].name].startswith("reused"), second
    suite = collect([suite_data / "patch-digits"], tmp_path, {"tuning": [0]}, ["topk"])
    result = suite.results[("patch-digits", "topk", 0)]
    assert result is not None and result.score("test", "masktune", "worst_group_accuracy") is not None
    assert result.plateau is not None and result.seconds > 0


def test_the_method_study_compares_every_variant_per_dataset(tmp_path: Path, suite_data: Path):
    folder = suite_data / "patch-digits"
    dataset = read_card(folder)["dataset"]
    store = RunStore(tmp_path / "runs")
    # ERM 40 on every seed; default's MaskTune 50 and 60 (+10, +20); topk's 42 and 44 (+2, +4).
    for variant, masktune in {"default": (0.5, 0.6), "topk": (0.42, 0.44)}.items():
        for seed, value in zip((10, 11), masktune, strict=True):
            scores = {split: {"erm": (0.4, 0.8), "masktune": (value, 0.8)} for split in ("val", "test")}
            _fake_run(store, runner.Job(folder, dataset, variant, seed), scores)
    roles = {"held-out": [10, 11]}
    page = render(collect([folder], store.root, roles, ["default", "topk", "gradcam"]), "cmd")
    study = page.split("## Method study")[1].split("\n## ")[0]
    assert "| `default` | the product defaults | 55.0 (+15.0) | 1 / 1 of 1 |" in study
    assert (
        "| `topk` | `--finetune-start best --iterations 1 --threshold-rule topk` | 43.0 (+3.0) | 1 / 0 of 1 |"
        in study
    )
    # A variant with no run on these seeds adds no row of dashes; the page names it instead.
    assert "| `gradcam` |" not in study
    assert "Not run on these seeds, so left out of their tables: `gradcam`." in study
    alone = render(collect([folder], store.root, roles, ["default"]), "cmd")
    assert "## Method study" not in alone  # the defaults alone have nothing to compare


def test_a_run_starts_from_the_erm_of_a_finished_run_that_differs_only_after_erm(
    tmp_path: Path, suite_data: Path, monkeypatch
):
    folder = suite_data / "tint-fashion"
    store = RunStore(tmp_path / "runs")
    scores = {split: {"erm": (0.5, 0.5), "masktune": (0.5, 0.5)} for split in ("val", "test")}
    best = _fake_run(store, runner.Job(folder, "celeba", "one-round", 0), scores)
    best.checkpoint_path("erm").write_bytes(b"seed 0 ERM")
    last = _fake_run(store, runner.Job(folder, "celeba", "start-last", 1), scores)
    last.checkpoint_path("erm").write_bytes(b"seed 1 ERM")
    last.checkpoint_path(LAST_ERM_STATE).write_bytes(b"seed 1 ERM's last state")
    launched = {}
    monkeypatch.setattr(
        runner, "_execute", lambda job, runs_dir, run: launched.update({job.name: run}) or ("done", 1.0)
    )
    jobs = runner.make_jobs([folder], [0, 1], ["start-both", "default"])
    runner.run_jobs(jobs, store.root)
    # The defaults go first, each from its seed's ERM.
    assert list(launched)[:2] == ["suite-tint-fashion-default-s0", "suite-tint-fashion-default-s1"]
    for seed in (0, 1):
        run = launched[f"suite-tint-fashion-default-s{seed}"]
        assert run.checkpoint_path("erm").read_bytes() == f"seed {seed} ERM".encode()
        assert run.raw_status()["stages_done"] == ["erm"]
        assert run.config() == runner.expected_config(runner.Job(folder, "celeba", "default", seed))
    # Candidates from ERM's last state need a source that kept it: only seed 1's has it.
    assert launched["suite-tint-fashion-start-both-s0"] is None
    seeded = launched["suite-tint-fashion-start-both-s1"]
    assert seeded.checkpoint_path(LAST_ERM_STATE).read_bytes() == b"seed 1 ERM's last state"
    # Another seed's ERM, or another ERM option, is never a source.
    other = runner.expected_config(runner.Job(folder, "celeba", "default", 2))
    assert runner.erm_source(other, store.list()) is None
    assert runner.erm_source({**other, "seed": 0, "lr": 0.01}, store.list()) is None


def test_a_run_made_before_an_option_existed_is_found_with_that_options_default(tmp_path: Path, suite_data):
    job = runner.Job(suite_data / "tint-fashion", "celeba", "default", 0)
    config = runner.expected_config(job)
    older = {key: value for key, value in config.items() if key not in ("mask_dilation", "finetune_start")}
    run = RunStore(tmp_path).create(older)
    # It masked without dilation and started every finetune from the kept ERM checkpoint.
    assert config["finetune_start"] == "best" and runner.find_run([run], config) is run
    assert runner.find_run([run], {**config, "finetune_start": "best,last"}) is None
    assert runner.find_run([run], {**config, "mask_dilation": 2}) is None


def test_the_finetune_cost_of_a_run_that_shared_its_erm_is_against_the_erm_that_trained_it(
    tmp_path: Path, suite_data: Path
):
    folder = suite_data / "patch-digits"
    dataset = read_card(folder)["dataset"]
    store = RunStore(tmp_path / "runs")
    scores = {split: {"erm": (0.4, 0.8), "masktune": (0.5, 0.8)} for split in ("val", "test")}
    _fake_run(store, runner.Job(folder, dataset, "one-round", 10), scores)  # ERM 40 s, finetune 10 s
    shared = _fake_run(store, runner.Job(folder, dataset, "default", 10), scores)
    events = [{"stage": "finetune_1", "kind": "timing", "seconds": 60.0}]  # no ERM stage of its own
    shared.file("events.jsonl").write_text("".join(json.dumps(event) + "\n" for event in events))
    suite = collect([folder], store.root, {"held-out": [10]}, ["default", "one-round"])
    page = render(suite, "cmd")
    assert "median 1.50× the wall time of the ERM stage that trained the run's ERM model" in page
    assert "(range 1.50–1.50×, 1 runs)" in page
