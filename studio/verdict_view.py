"""The verdict on MaskTune against ERM (judged on val) and every finetune candidate, for the Results page."""

from __future__ import annotations

from typing import Any

import pandas as pd
import streamlit as st

from masktune_core.verdict import METRIC_TEXT

LABEL_ICONS = {
    "helped": ":material/thumb_up:",
    "hurt": ":material/warning:",
    "no clear difference": ":material/balance:",
}


def verdict_banner(metrics: dict[str, Any]) -> None:
    """Shown first on a run's results: a warning recommending ERM when MaskTune was worse on val."""
    verdict = metrics.get("verdict")
    if not verdict:
        st.info("No verdict recorded: this run predates the MaskTune-vs-ERM verdict on val.")
        return
    text = f"**Verdict (judged on val): {verdict['label']}.** {verdict['text']}"
    icon = LABEL_ICONS.get(verdict["label"])
    if verdict["label"] == "hurt" or verdict.get("kept_source"):
        st.warning(text + " **Recommendation: use the ERM model.**", icon=icon)
    elif verdict["label"] == "helped":
        st.success(text, icon=icon)
    else:
        st.info(text, icon=icon)
    for note in verdict.get("notes", []):
        st.caption(note)
    st.caption(
        f"How it is judged: the difference MaskTune − ERM in val {METRIC_TEXT[verdict['metric']]}, with a "
        f"paired bootstrap interval ({verdict['resamples']} resamples within each group or class). "
        "The MaskTune model was itself chosen on val, so the val difference leans optimistic; the test "
        "splits below played no part in any choice."
    )


def candidates_table(metrics: dict[str, Any]) -> None:
    """Every finetune candidate's val score and val / test numbers: nothing the choice saw is hidden."""
    candidates = metrics.get("candidates") or []
    if not candidates:
        return
    splits = [s for s in metrics.get("splits", {}) if s != "val"]
    rows = []
    for candidate in candidates:
        row = {
            "candidate": candidate["name"],
            "finetune lr": candidate["settings"].get("finetune_lr"),
            "fill": candidate["settings"].get("fill", "black"),
            "kept epoch": candidate["settings"].get("kept_epoch", 1.0),
            "kept": candidate["selected"],
            "val score": 100 * candidate["val_score"]["value"],
        }
        for split in ["val", *splits]:
            numbers = candidate["splits"].get(split, {})
            row[f"{split} acc"] = _pct(numbers.get("accuracy"))
            row[f"{split} worst-group"] = _pct(numbers.get("worst_group_accuracy"))
        rows.append(row)
    metric = METRIC_TEXT[candidates[0]["val_score"]["metric"]]
    st.markdown("#### Finetune candidates")
    st.caption(
        "Each candidate finetunes the same ERM model on the same masks with its learning rate and fill, and "
        "keeps its best val check ('kept epoch'); the run keeps the candidate with the best val "
        f"{metric} (the 'val score'), or ERM itself when none beats it. Test numbers are shown, never used."
    )
    st.dataframe(
        pd.DataFrame(rows),
        hide_index=True,
        column_config={"val score": st.column_config.NumberColumn(format="%.1f%%")},
    )


def _pct(value: float | None) -> float | None:
    return None if value is None else round(100 * value, 1)


def verdict_label(metrics: dict[str, Any] | None) -> str | None:
    """The short label for tables (the Runs page)."""
    return ((metrics or {}).get("verdict") or {}).get("label")
