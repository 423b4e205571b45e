"""``python -m masktune_core selective RUN_ID``: fit thresholds to a target risk on val, with the SGR
guarantee when ``--delta`` is given, report them on test, and save them as a threshold set of the run (the
format the Selective and "Try an image" pages load).

Bad input (a target outside (0, 1), an unknown rule, a run without predictions) is one line on stderr and
exit 2, and nothing is saved.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from masktune_core import selective
from masktune_core.errors import ConfigError
from masktune_core.runs import Run, RunStore, default_runs_dir


def _unit_interval(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number in (0, 1), got {text!r}") from None
    if not 0.0 < value < 1.0:
        raise argparse.ArgumentTypeError(f"must lie in (0, 1), got {value}")
    return value


HELP = "fit thresholds to a target selective risk on val, report on test, save a threshold set"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``selective`` subcommand's options."""
    parser.add_argument("run_id", help="a finished run with saved predictions")
    parser.add_argument(
        "--rule",
        default="agreement",
        choices=list(selective.RULES),
        help="selection rule (default: agreement)",
    )
    parser.add_argument(
        "--target-risk",
        type=_unit_interval,
        required=True,
        help="target selective risk r*, in (0, 1), e.g. 0.02 (default: none, required)",
    )
    parser.add_argument(
        "--delta",
        type=_unit_interval,
        default=None,
        help="with a guarantee: the risk bound holds with probability >= 1 - delta "
        "(SGR, Clopper-Pearson) (default: none, the empirical val risk is fitted)",
    )
    scope = parser.add_mutually_exclusive_group()
    scope.add_argument(
        "--per-class",
        action="store_true",
        help="one threshold per predicted class, each class's risk <= r* (default: one global)",
    )
    scope.add_argument(
        "--per-group",
        action="store_true",
        help="one global threshold, the worst group's risk <= r* (datasets with groups) (default: off)",
    )
    parser.add_argument(
        "--fit-weights",
        action="store_true",
        help="fit per-class tolerance weights on val first (default: weights 1)",
    )
    parser.add_argument(
        "--test-split", default=None, help="split to report on (default: the run's main test split)"
    )
    parser.add_argument(
        "--name", default=None, help="name of the saved threshold set (default: from the options)"
    )
    parser.add_argument("--runs-dir", default=None, help="run store (default: $MASKTUNE_RUNS_DIR or runs/)")
    parser.add_argument(
        "--json", action="store_true", help="print the result as JSON (default: a text summary)"
    )


def _scored(run: Run, rule: str, split: str) -> selective.Scored:
    preds = run.predictions(split)
    if preds is None or "probs_erm" not in preds or "probs_masktune" not in preds:
        raise ConfigError("predictions", f"run {run.id} has no saved predictions of both models on {split!r}")
    return selective.score(
        rule, preds["probs_erm"], preds["probs_masktune"], preds["label"], preds.get("group")
    )


def fit_and_report(run: Run, args: argparse.Namespace) -> tuple[dict[str, Any], selective.ThresholdSet]:
    """Everything the command prints, and the threshold set it saves (not yet saved)."""
    scope = "per_class" if args.per_class else "per_group" if args.per_group else "global"
    test_split = args.test_split or _main_test_split(run)
    val, test = _scored(run, args.rule, "val"), _scored(run, args.rule, test_split)
    weights = selective.fit_class_weights(val) if args.fit_weights else None
    ranking = selective.rank(val, weights)
    fit = selective.fit_risk(ranking, args.target_risk, args.delta, scope)  # type: ignore[arg-type]
    report = selective.check_on_test(fit, test)
    test_rank = selective.rank(test, ranking.weights)
    curve = selective.summarize(test_rank)
    intervals = selective.bootstrap_summary(test_rank)
    kind = "risk" if args.delta is None else "guaranteed_risk"
    name = args.name or f"{args.rule}-{scope}-risk{args.target_risk:g}" + (
        f"-delta{args.delta:g}" if args.delta is not None else ""
    )
    fit_record = {"target": kind, "value": args.target_risk, **fit.to_dict()}
    threshold_set = selective.ThresholdSet(
        name, args.rule, fit.thresholds, "val", run_id=run.id, fit=fit_record
    )
    result = {
        "run_id": run.id,
        "rule": args.rule,
        "scope": scope,
        "target_risk": args.target_risk,
        "delta": args.delta,
        "fitted_on": "val",
        "thresholds": {
            "global_threshold": fit.thresholds.global_threshold,
            "per_class": list(fit.thresholds.per_class),
            "weights": list(fit.thresholds.weights),
        },
        "val": {
            "feasible": fit.feasible,
            "coverage": fit.val_coverage,
            "selective_risk": fit.val_risk,
            "risk_upper_bound": fit.val_bound if args.delta is not None else None,
            "bound_tests": fit.tests,
            "parts": fit.parts,
        },
        "test": {
            "split": test_split,
            "coverage": report["coverage"],
            "selective_risk": report["selective_risk"],
            "target_held": report["held"],
            "units": report["units"],
            "aurc": curve.aurc,
            "aurc_95ci": [intervals["aurc"].low, intervals["aurc"].high],
            "augrc": curve.augrc,
            "augrc_95ci": [intervals["augrc"].low, intervals["augrc"].high],
            "eaurc": curve.eaurc,
            "bootstrap": {"resamples": intervals["aurc"].resamples, "seed": intervals["aurc"].seed},
        },
        "threshold_set": name,
    }
    return result, threshold_set


def _main_test_split(run: Run) -> str:
    metrics = run.metrics() or {}
    split = metrics.get("main_test_split")
    if not split:
        raise ConfigError(
            "predictions", f"run {run.id} has no metrics.json naming its test split; is it done?"
        )
    return split


def _pct(value: float | None, digits: int = 2) -> str:
    return "undefined" if value is None else f"{100 * value:.{digits}f}%"


def run(args: argparse.Namespace) -> int:
    """Fit, report and save; print the result (JSON with ``--json``)."""
    store = RunStore(args.runs_dir or default_runs_dir())
    target_run = store.get(args.run_id)
    result, threshold_set = fit_and_report(target_run, args)
    target_run.save_threshold_set(threshold_set.name, threshold_set.to_dict())
    if args.json:
        print(json.dumps(result, indent=2, allow_nan=False))
        return 0
    val, test = result["val"], result["test"]
    bound = (
        ""
        if args.delta is None
        else f", upper bound {_pct(val['risk_upper_bound'])} (1 - delta = {1 - args.delta:g})"
    )
    feasible = "" if val["feasible"] else "; no threshold meets the target, the strictest is saved"
    print(
        f"fitted on val ({result['scope']}, rule {args.rule}): coverage {_pct(val['coverage'], 1)}, "
        f"selective risk {_pct(val['selective_risk'])}{bound}{feasible}"
    )
    held = "held" if test["target_held"] else "missed"
    print(
        f"on {test['split']}: coverage {_pct(test['coverage'], 1)}, selective risk "
        f"{_pct(test['selective_risk'])}, target {_pct(args.target_risk)} {held}"
    )
    print(f"{test['split']} AURC [0, 1] {_pct(test['aurc'], 3)}, AUGRC {_pct(test['augrc'], 3)}")
    print(f"saved threshold set {threshold_set.name!r} in {target_run.path / 'selective'}")
    return 0
