"""The method's choices on val: recipes by regime, finetune candidates, early stopping and the verdict."""

from __future__ import annotations

import json

import numpy as np
import pytest

from masktune_core import candidates, finetune, models, pipeline, runs, train, verdict
from masktune_core.config import RunConfig
from masktune_core.data import build_dataset
from masktune_core.errors import ConfigError
from masktune_core.recipes import FROM_SCRATCH, recipe_for


def one_hot(predictions: np.ndarray, classes: int = 2) -> np.ndarray:
    return np.eye(classes, dtype=np.float32)[predictions]


def plain_worst(correct: np.ndarray, strata: np.ndarray) -> float:
    return min(float(correct[strata == s].mean()) for s in set(strata.tolist()))


# ---------------------------------------------------------------------- selection score
def test_selection_score_is_worst_group_with_groups_and_worst_class_without() -> None:
    labels = np.array([0, 0, 1, 1, 1, 1])
    groups = np.array([0, 1, 2, 2, 3, 3])
    predictions = np.array([0, 1, 1, 1, 1, 0])
    with_groups = verdict.selection_score(one_hot(predictions), labels, groups)
    assert with_groups.metric == "worst_group_accuracy"
    assert with_groups.value == plain_worst(predictions == labels, groups) == 0.0
    assert with_groups.tie_break == pytest.approx(np.mean([1.0, 0.0, 1.0, 0.5]))
    without = verdict.selection_score(one_hot(predictions), labels, None)
    assert without.metric == "worst_class_accuracy"
    assert without.value == pytest.approx(0.5)  # class 0: 1 of 2 right; class 1: 3 of 4
    assert without.tie_break == pytest.approx(4 / 6)


def test_ties_on_the_score_go_to_the_tie_break_then_to_the_source() -> None:
    source = {"metric": "worst_group_accuracy", "value": 0.5, "tie_break": 0.7}
    entries = {
        "source": "erm",
        "source_score": source,
        "candidates": [
            {"name": "a", "val_score": {**source, "tie_break": 0.6}},
            {"name": "b", "val_score": {**source, "tie_break": 0.7}},  # equal to the source: not better
        ],
    }
    assert candidates.choose_candidate(entries, "val") == "erm"
    assert candidates.choose_candidate(entries, "none") == "b"
    entries["candidates"].append({"name": "c", "val_score": {**source, "value": 0.51, "tie_break": 0.0}})
    assert candidates.choose_candidate(entries, "val") == "c"


# ---------------------------------------------------------------------- verdict
def test_identical_models_get_no_clear_difference_with_a_zero_interval() -> None:
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 400)
    groups = labels * 2 + rng.integers(0, 2, 400)
    probs = one_hot(np.where(rng.random(400) < 0.8, labels, 1 - labels))
    result = verdict.judge(probs, probs, labels, groups)
    assert result["label"] == "no clear difference"
    assert result["difference"] == 0.0
    assert result["interval"] == [0.0, 0.0]
    assert result["recommendation"] == "erm"


@pytest.mark.parametrize(("better", "label"), [("masktune", "helped"), ("erm", "hurt")])
def test_a_clear_gain_or_loss_in_the_worst_group_is_called(better: str, label: str) -> None:
    rng = np.random.default_rng(1)
    labels = np.repeat([0, 1], 300)
    groups = labels * 2 + np.tile([0, 1], 300)
    good = one_hot(np.where(rng.random(600) < 0.9, labels, 1 - labels))
    # The weak model fails half of group 3 only: worst group 0.5 against about 0.9.
    weak_predictions = good.argmax(1).copy()
    weak_predictions[(groups == 3) & (rng.random(600) < 0.5)] = 0
    weak = one_hot(weak_predictions)
    erm, masktune = (weak, good) if better == "masktune" else (good, weak)
    result = verdict.judge(erm, masktune, labels, groups, resamples=500)
    assert result["label"] == label
    expected = plain_worst(masktune.argmax(1) == labels, groups) - plain_worst(
        erm.argmax(1) == labels, groups
    )
    assert result["difference"] == pytest.approx(expected)
    low, high = result["interval"]
    assert low <= result["difference"] <= high
    assert result["recommendation"] == ("masktune" if label == "helped" else "erm")
    assert label.split()[0] in result["text"].lower()


def test_the_bootstrap_is_seeded() -> None:
    rng = np.random.default_rng(2)
    labels = rng.integers(0, 2, 200)
    a, b = one_hot(rng.integers(0, 2, 200)), one_hot(rng.integers(0, 2, 200))
    assert verdict.judge(a, b, labels, None, seed=3) == verdict.judge(a, b, labels, None, seed=3)


# ---------------------------------------------------------------------- recipes and config
def test_recipes_are_keyed_by_regime_for_folder_datasets() -> None:
    scratch = recipe_for("waterbirds", "small-cnn")
    assert (scratch.optimizer, scratch.lr, scratch.patience) == (
        "adam",
        FROM_SCRATCH.lr,
        FROM_SCRATCH.patience,
    )
    assert len(scratch.finetune_lrs) * len(scratch.finetune_fills) > 1
    assert scratch.finetune_checks > 1 and scratch.finetune_epochs > 1
    pretrained = recipe_for("waterbirds", "resnet50", pretrained="weights.pt")
    assert (pretrained.optimizer, pretrained.lr, pretrained.finetune_lr) == ("sgd", 0.001, 0.0001)
    assert recipe_for("biased-digits").finetune_selection == "none"


def test_a_finetune_lr_given_alone_is_the_only_candidate_and_lists_parse() -> None:
    assert RunConfig(dataset="digits", finetune_lr=0.02).resolved().finetune_lrs == (0.02,)
    config = RunConfig.from_dict({"dataset": "digits", "finetune_lrs": "0.001, 0.0001"}).resolved()
    assert config.finetune_lrs == (0.001, 0.0001)
    assert json.loads(json.dumps(config.to_dict()))["finetune_lrs"] == [0.001, 0.0001]


def test_fills_resolve_like_learning_rates() -> None:
    scratch = {"dataset": "waterbirds", "data_dir": "."}
    assert RunConfig.from_dict(scratch).resolved().finetune_fills == FROM_SCRATCH.finetune_fills
    # --fill given alone is the only fill; --finetune-fills lists them; the demo recipe transplants.
    assert RunConfig.from_dict({**scratch, "fill": "blur"}).resolved().finetune_fills == ("blur",)
    listed = RunConfig.from_dict({**scratch, "finetune_fills": "swap, mean"}).resolved()
    assert listed.finetune_fills == ("swap", "mean")
    assert json.loads(json.dumps(listed.to_dict()))["finetune_fills"] == ["swap", "mean"]
    assert RunConfig(dataset="biased-digits").resolved().finetune_fills == ("transplant",)
    assert RunConfig(dataset="biased-mnist").resolved().finetune_fills == ("black",)


def test_starts_multiply_the_candidates_and_name_the_last_state_ones() -> None:
    scratch = {"dataset": "waterbirds", "data_dir": "."}
    assert RunConfig.from_dict(scratch).resolved().finetune_start == "best"
    both = RunConfig.from_dict({**scratch, "finetune_start": "best,last"}).resolved()
    assert both.finetune_starts() == ("best", "last")
    names = [candidates.candidate_name(1, s) for s in candidates.candidate_settings(both)]
    assert names == [
        "masktune_1_black_lr0.001",
        "masktune_1_swap_lr0.001",
        "masktune_1_transplant_lr0.001",
        "masktune_1_black_lr0.001_last",
        "masktune_1_swap_lr0.001_last",
        "masktune_1_transplant_lr0.001_last",
    ]
    # A config saved before starts existed started from the kept checkpoint.
    assert [s.start for s in candidates.candidate_settings(RunConfig(dataset="digits"))] == ["best"]
    # Two starts x three fills x two lrs is over the limit of six candidates.
    with pytest.raises(ConfigError) as err:
        RunConfig.from_dict({**both.to_dict(), "finetune_lrs": "0.001,0.0001"}).resolved()
    assert err.value.field == "finetune_lrs"


def test_from_scratch_runs_two_rounds_and_the_published_recipes_one() -> None:
    assert RunConfig.from_dict({"dataset": "waterbirds", "data_dir": "."}).resolved().iterations == 2
    assert RunConfig(dataset="biased-digits").resolved().iterations == 1
    assert (
        RunConfig.from_dict({"dataset": "waterbirds", "data_dir": ".", "iterations": 1}).resolved().iterations
        == 1
    )


@pytest.mark.parametrize(
    ("values", "field"),
    [
        ({"finetune_lrs": "0.001,abc"}, "finetune_lrs"),
        ({"finetune_lrs": "0.001,-1"}, "finetune_lrs"),
        ({"finetune_lrs": ",".join(["0.001"] * 7)}, "finetune_lrs"),
        ({"finetune_lrs": "0.1,0.01,0.001", "finetune_fills": "black,swap,mean"}, "finetune_lrs"),
        ({"finetune_fills": "black,paint"}, "finetune_fills"),
        ({"finetune_fills": "black,black"}, "finetune_fills"),
        ({"finetune_epochs": "0"}, "finetune_epochs"),
        ({"finetune_checks": "21"}, "finetune_checks"),
        ({"finetune_selection": "best"}, "finetune_selection"),
        ({"patience": "-1"}, "patience"),
        ({"mask_dilation": "-1"}, "mask_dilation"),
        ({"mask_dilation": "17"}, "mask_dilation"),
        ({"finetune_start": "first"}, "finetune_start"),
        ({"finetune_start": "best,best"}, "finetune_start"),
        ({"finetune_start": ","}, "finetune_start"),
    ],
)
def test_bad_method_options_are_refused_by_name(values: dict, field: str) -> None:
    with pytest.raises(ConfigError) as err:
        RunConfig.from_dict(values)
    assert err.value.field == field


# ---------------------------------------------------------------------- in a run
@pytest.mark.slow
def test_a_finished_run_keeps_every_candidate_and_its_verdict(finished_store) -> None:
    import torch

    run = finished_store.list()[0]
    metrics = run.metrics()
    candidates = metrics["candidates"]
    assert [c["settings"]["finetune_lr"] for c in candidates] == [0.01, 0.001]
    assert sum(c["selected"] for c in candidates) <= 1
    for candidate in candidates:
        assert set(candidate["splits"]) == set(metrics["splits"])
    kept = json.loads(run.file("candidates.json").read_text())["1"]["selected"]
    chosen = [c for c in candidates if c["selected"]]
    assert kept == (chosen[0]["name"] if chosen else "erm")
    final = torch.load(run.checkpoint_path("masktune"), weights_only=True)
    source = torch.load(run.checkpoint_path(kept), weights_only=True)
    assert all(torch.equal(final[k], source[k]) for k in final)
    # Each candidate holds its best val check, and its checkpoint is that check's model.
    config = RunConfig.from_dict(run.load_config())
    bundle = build_dataset(config.dataset, config.data_options())
    val = bundle.splits["val"]
    for candidate in json.loads(run.file("candidates.json").read_text())["1"]["candidates"]:
        path = candidate["path"]
        assert [p["epoch"] for p in path] == [pytest.approx(0.5, abs=0.05), 1.0]  # steps round
        best = max(path, key=lambda p: (p["val_score"]["value"], p["val_score"]["tie_break"]))
        assert candidate["val_score"] == best["val_score"]
        assert candidate["settings"]["kept_epoch"] == pytest.approx(best["epoch"], abs=0.02)
        model = models.build_model(
            config.backbone, bundle.num_classes, bundle.channels, bundle.image_size, bundle.mean, bundle.std
        )
        models.load_state(model, run.checkpoint_path(candidate["name"]))
        probs = train.predict_probs(model, val.images, batch_size=256, device=torch.device("cpu"))
        score = verdict.selection_score(probs, val.labels.numpy(), val.groups.numpy())
        saved = candidate["val_score"]
        assert (score.value, score.tie_break) == pytest.approx((saved["value"], saved["tie_break"]))
    result = metrics["verdict"]
    assert result["split"] == "val" and result["label"] in ("helped", "hurt", "no clear difference")
    assert result["kept_source"] == (kept == "erm")
    effect = result["mask_effect"]
    assert 0 <= effect["train_accuracy_masked"] <= 1 and effect["n"] > 0


def test_erm_stops_once_val_stops_improving(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    from masktune_core.runs import RunStore

    scores = iter([0.5, 0.6, 0.6, 0.55, 0.9])  # best at epoch 2; patience 2 ends ERM after epoch 4

    def fake_scores(ctx, model):
        return {"accuracy": next(scores), "worst_group_accuracy": None, "loss": 1.0}

    monkeypatch.setattr(pipeline, "validation_scores", fake_scores)
    monkeypatch.setattr(pipeline, "plan_stages", lambda config: [("erm", 5.0)])
    config = RunConfig.from_dict(
        {"dataset": "biased-digits", "epochs": 5, "patience": 2, "train_copies": 0, "batch_size": 256}
    ).resolved()
    run = RunStore(tmp_path).create(config.to_dict())
    assert pipeline.execute(run)["state"] == "done"
    epochs = [e for e in run.events() if e.get("kind") == "epoch"]
    assert [e["epoch"] for e in epochs] == [1, 2, 3, 4]
    assert [e["selected"] for e in epochs] == [True, True, False, False]
    stops = [e for e in run.events() if e.get("kind") == "early_stop"]
    assert [(e["epoch"], e["best_epoch"]) for e in stops] == [(4, 2)]


@pytest.mark.parametrize(
    ("original", "masked", "noted"),
    [(0.98, 0.975, True), (0.98, 0.80, False), (0.52, 0.52, False)],  # unhidden cue; hidden; ERM at chance
)
def test_the_verdict_says_when_the_masks_hid_nothing_erm_relies_on(
    tmp_path, original: float, masked: float, noted: bool
) -> None:
    from masktune_core.runs import RunStore, write_json

    run = RunStore(tmp_path).create(RunConfig(dataset="digits").resolved().to_dict())
    effect = {"train_accuracy_original": original, "train_accuracy_masked": masked, "n": 100}
    write_json(
        run.file(candidates.CANDIDATES_FILE),
        {"1": {"source": "erm", "selected": "erm", "candidates": [], "mask_effect": effect}},
    )
    labels = np.repeat([0, 1], 50)
    probs = one_hot(labels)
    result = candidates.run_verdict(run, 0, probs, probs, labels, None)
    assert result["kept_source"] and result["mask_effect"] == effect
    assert any("kept ERM" in note or "keeps ERM" in note for note in result["notes"])
    assert any("masks hid little" in note for note in result["notes"]) == noted


def test_a_kept_finetune_over_masks_that_hid_little_does_not_claim_the_cue_was_out_of_reach(tmp_path) -> None:
    from masktune_core.runs import RunStore, write_json

    run = RunStore(tmp_path).create(RunConfig(dataset="digits").resolved().to_dict())
    effect = {"train_accuracy_original": 0.987, "train_accuracy_masked": 0.983, "n": 100}
    kept = "masktune_1_swap_lr0.001"
    write_json(
        run.file(candidates.CANDIDATES_FILE),
        {"1": {"source": "erm", "selected": kept, "candidates": [], "mask_effect": effect}},
    )
    labels = np.repeat([0, 1], 50)
    result = candidates.run_verdict(run, 0, one_hot(labels), one_hot(labels), labels, None)
    note = next(note for note in result["notes"] if "masks hid little" in note)
    assert "98.7% on original and 98.3% on masked" in note and "did not come from hiding the cue" in note
    assert "cannot be removed" not in note


def test_a_kept_finetune_says_val_chose_it_among_its_checks(tmp_path) -> None:
    from masktune_core.runs import RunStore, write_json

    run = RunStore(tmp_path).create(RunConfig(dataset="digits").resolved().to_dict())
    path = [{"epoch": 1.0, "val_score": {"metric": "worst_class_accuracy", "value": 0.5, "tie_break": 0.5}}]
    kept = {"name": "masktune_1_black_lr0.001", "path": path * 4}
    write_json(
        run.file(candidates.CANDIDATES_FILE),
        {"1": {"source": "erm", "selected": kept["name"], "candidates": [kept, {"name": "b", "path": path}]}},
    )
    labels = np.repeat([0, 1], 50)
    result = candidates.run_verdict(run, 0, one_hot(labels), one_hot(labels), labels, None)
    assert any("among 5 candidate checks" in note and "test split" in note for note in result["notes"])


@pytest.mark.parametrize(("fixed", "kept"), [(12, "erm"), (48, "masktune_1_black_lr0.001")])
def test_a_candidate_replaces_erm_only_with_a_clear_gain_on_val(fixed: int, kept: str) -> None:
    # 4 groups of 100; ERM gets 50 of group 3 right. The candidate fixes ``fixed`` of its errors there and
    # breaks 8 of its right answers: +4 points is within the noise of 100 samples, +40 is not.
    labels, groups = np.repeat([0, 0, 1, 1], 100), np.repeat([0, 1, 2, 3], 100)
    erm_pred = labels.copy()
    erm_pred[300:350] = 0
    best_pred = erm_pred.copy()
    best_pred[300 : 300 + fixed] = 1
    best_pred[350:358] = 0
    entries = {"source": "erm", "candidates": []}
    name = "masktune_1_black_lr0.001"
    assert (
        candidates.confirm_gain(entries, name, one_hot(erm_pred), one_hot(best_pred), labels, groups, 0)
        == kept
    )
    record = entries["best_candidate"]
    assert record["name"] == name and record["difference"] == pytest.approx((fixed - 8) / 100)
    assert record["label"] == ("helped" if kept == name else "no clear difference")


def test_a_run_that_kept_erm_over_an_unclear_gain_says_so(tmp_path) -> None:
    from masktune_core.runs import RunStore, write_json

    run = RunStore(tmp_path).create(RunConfig(dataset="digits").resolved().to_dict())
    best = {
        "name": "masktune_1_swap_lr0.001",
        "label": "no clear difference",
        "metric": "worst_group_accuracy",
    }
    best |= {"difference": 0.008, "interval": [-0.02, 0.036]}
    write_json(
        run.file(candidates.CANDIDATES_FILE),
        {"1": {"source": "erm", "selected": "erm", "candidates": [], "best_candidate": best}},
    )
    labels = np.repeat([0, 1], 50)
    result = candidates.run_verdict(run, 0, one_hot(labels), one_hot(labels), labels, None)
    note = next(n for n in result["notes"] if "masktune_1_swap_lr0.001" in n)
    assert "+0.8 points" in note and "(-2.0 to +3.6)" in note and "keeps ERM's weights" in note


@pytest.mark.slow
def test_a_finetune_from_last_starts_from_erms_last_epoch_with_its_optimizer_state(
    tmp_path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import torch

    from masktune_core.runs import RunStore

    carried = []
    real = finetune.carry_last_erm_state

    def spy(ctx, model, optimizer, lr):
        real(ctx, model, optimizer, lr)
        carried.append((lr, {g["lr"] for g in optimizer.param_groups}, len(optimizer.state)))

    monkeypatch.setattr(finetune, "carry_last_erm_state", spy)
    values = {"dataset": "biased-digits", "epochs": 2, "patience": 0, "train_copies": 0, "batch_size": 256}
    values |= {"finetune_start": "last", "finetune_lrs": "0.01,0.001", "finetune_selection": "val"}
    run = RunStore(tmp_path).create(RunConfig.from_dict(values).resolved().to_dict())
    assert pipeline.execute(run)["state"] == "done"
    state = torch.load(run.checkpoint_path(runs.LAST_ERM_STATE), weights_only=True)
    assert state["epoch"] == 2 and state["optimizer"]["state"], "ERM's last epoch and its optimizer state"
    # Each candidate starts from that state at its own learning rate, with the optimizer's buffers.
    assert [(lr, lrs) for lr, lrs, _ in carried] == [(0.01, {0.01}), (0.001, {0.001})]
    assert all(buffers > 0 for _, _, buffers in carried)


def test_a_missing_last_erm_state_is_a_checkpoint_error(tmp_path) -> None:
    from types import SimpleNamespace

    import torch

    from masktune_core.errors import CheckpointError
    from masktune_core.runs import RunStore

    run = RunStore(tmp_path).create(RunConfig(dataset="digits").resolved().to_dict())
    model = torch.nn.Linear(2, 2)
    optimizer = torch.optim.SGD(model.parameters())
    with pytest.raises(CheckpointError, match="last state is missing"):
        finetune.carry_last_erm_state(SimpleNamespace(run=run), model, optimizer, 0.1)


@pytest.mark.parametrize(("second", "kept_erm"), [("masktune_2_black_lr0.001", False), ("masktune_1", True)])
def test_erm_is_kept_only_when_every_round_kept_the_model_it_started_from(
    tmp_path, second: str, kept_erm: bool
) -> None:
    from masktune_core.runs import RunStore, write_json

    run = RunStore(tmp_path).create(RunConfig(dataset="digits").resolved().to_dict())
    best = {
        "name": "masktune_1_swap_lr0.001",
        "label": "no clear difference",
        "metric": "worst_group_accuracy",
    }
    best |= {"difference": 0.036, "interval": [-0.016, 0.096]}
    path = [{"epoch": 1.0, "val_score": {"metric": "worst_group_accuracy", "value": 0.5, "tie_break": 0.5}}]
    rounds = {
        "1": {
            "source": "erm",
            "selected": "erm",
            "candidates": [{"name": "a", "path": path}],
            "best_candidate": best,
        },
        "2": {"source": "masktune_1", "selected": second, "candidates": [{"name": "b", "path": path * 3}]},
    }
    write_json(run.file(candidates.CANDIDATES_FILE), rounds)
    labels = np.repeat([0, 1], 50)
    result = candidates.run_verdict(run, 0, one_hot(labels), one_hot(labels), labels, None)
    assert result["kept_source"] == kept_erm
    keeps_erm = [note for note in result["notes"] if "keeps ERM's weights" in note]
    if kept_erm:
        assert len(keeps_erm) == 1 and "nor was any candidate of the 1 later round(s)" in keeps_erm[0]
    else:  # the second round's finetune is the model: the checks of both rounds chose it
        assert not keeps_erm and any("among 4 candidate checks" in note for note in result["notes"])
