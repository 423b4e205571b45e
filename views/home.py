"""Runs: every run in the store with its state and headline numbers; open, resume or delete one.

The table refreshes every second while any run is queued or running, and stops once none is.
"""

from __future__ import annotations

from typing import Any

import pandas as pd
import streamlit as st

from masktune_core.errors import MaskTuneError
from masktune_core.runs import ACTIVE_STATES, Run
from studio import charts, common, launch_form, runs_state, verdict_view
from studio import studies as study_ui

RESUMABLE = ("interrupted", "failed", "cancelled")

title, refresh = st.columns([12, 1], vertical_alignment="bottom")
title.title("Runs")
# The table polls only while a run is active; a run started elsewhere (the CLI) shows up on refresh.
refresh.button("", icon=":material/refresh:", help="Refresh the list of runs", key="refresh_runs")
store = common.store()


def launch_demo() -> None:
    from masktune_core import jobs
    from masktune_core.config import RunConfig

    try:
        run = jobs.submit(store, RunConfig.from_dict({"name": "demo"}))
    except MaskTuneError as err:
        st.error(str(err))
        return
    st.switch_page(common.PAGES["launch"], query_params={"run": run.id})


def empty_state() -> None:
    st.info(f"No runs yet in `{common.runs_dir_label()}`.", icon=":material/inbox:")
    st.markdown(
        "Start with the **demo run**: biased digits (digits 0–4 vs 5–9, with a coloured square that "
        "gives the label away on 99% of training images) with the paper's small CNN: bundled data, "
        "a minute or two on two CPU cores."
    )
    if st.button("Launch the demo run", type="primary", icon=":material/rocket_launch:"):
        launch_demo()
    common.link("launch", "Or configure an experiment on the Launch page", icon=":material/tune:")
    st.caption("From a terminal, the same demo run:")
    st.code("masktune run --name demo", language="bash")


def headline(run: Run) -> tuple[str | None, dict[str, float | None]]:
    """The run's main test split and, on it, accuracy and worst-group accuracy of ERM and MaskTune."""
    metrics = common.metrics(run) or {}
    split = metrics.get("main_test_split")
    models = metrics.get("splits", {}).get(split, {})
    values = {}
    for model in ("erm", "masktune"):
        m = models.get(model, {})
        values[f"{model}_acc"] = m.get("accuracy")
        values[f"{model}_wga"] = m.get("worst_group_accuracy")
    return split, values


def state_text(state: str, stage: str | None, place: int | None) -> str:
    if state == "queued" and place:
        return f"queued (#{place} in line)"
    if state in ACTIVE_STATES and stage:
        return f"{state} · {stage.replace('_', ' ')}"
    return state


def table(runs: list[Run]) -> tuple[pd.DataFrame, dict[str, Any], list[str], str]:
    """The runs table, its column configuration, the run ids by row, and the split the numbers are on."""
    positions = launch_form.queue_positions(runs)

    def run_row(run: Run) -> dict[str, Any]:
        config, status = run.config(), run.status()
        state = status.get("state") or "interrupted"
        split, values = headline(run)
        return {
            "name": config.get("name") or run.id,
            "data": f"{config.get('dataset')} / {config.get('backbone')}",
            "state": state_text(state, status.get("stage"), positions.get(run.id)),
            "progress": 100 * float(status.get("progress") or 0.0),
            "started": common.timestamp(status.get("started") or status.get("created")),
            "duration": charts.duration_text(common.run_duration(status)),
            "split": split,
            **{k: None if v is None else 100 * v for k, v in values.items()},
            "verdict": verdict_view.verdict_label(common.metrics(run)),
        }

    groups = study_ui.grouped(runs)
    # A seed study is one row (its mean over finished seeds); selecting it lists its runs.
    rows = [
        run_row(members[0]) if row_id == members[0].id else study_ui.study_row(row_id, members, run_row)
        for row_id, members in groups
    ]
    frame = pd.DataFrame(rows)
    splits = sorted({row["split"] for row in rows if row["split"]})
    # One shared split is named once above the table; otherwise each row names its own.
    where = f"`{splits[0]}`" if len(splits) == 1 else "each run's main test split"

    def percent(label: str, what: str) -> Any:
        return st.column_config.NumberColumn(label, format="%.1f%%", help=f"{what}, on {where}.")

    config = {
        "name": st.column_config.TextColumn("Name", pinned=True),
        "data": "Dataset / backbone",
        "state": st.column_config.TextColumn("State", help="For a running run, also its current stage."),
        "progress": launch_form.progress_column(),
        "started": st.column_config.DatetimeColumn("Started", format="MMM D, HH:mm"),
        "duration": "Duration",
        "split": st.column_config.TextColumn("Test split", help="The split the accuracies are on."),
        "erm_acc": percent("ERM acc", "ERM accuracy (plain mean over the split's samples)"),
        "masktune_acc": percent("MaskTune acc", "MaskTune accuracy (plain mean over the split's samples)"),
        "erm_wga": percent("ERM worst-group", "ERM accuracy on its worst (class, attribute) group"),
        "masktune_wga": percent(
            "MaskTune worst-group", "MaskTune accuracy on its worst (class, attribute) group"
        ),
        "verdict": st.column_config.TextColumn(
            "Verdict (val)", help="Did MaskTune beat ERM? Judged on val with a bootstrap interval."
        ),
    }
    order = ["name", "data", "state", "progress", "started", "duration"]
    if len(splits) > 1:
        order.append("split")
    order += ["erm_acc", "masktune_acc", "erm_wga", "masktune_wga", "verdict"]
    return frame[order], config, [row_id for row_id, _ in groups], where


def actions(run: Run) -> None:
    """Links into the analysis pages, and resume / delete, for the selected run."""
    config, status = run.config(), run.status()
    state = status.get("state")
    st.subheader(config.get("name") or run.id)
    st.caption(f"`{run.id}` · {config.get('dataset')} / {config.get('backbone')} · {state}")
    if state in ("failed", "interrupted") and status.get("error"):
        st.error(status["error"], icon=":material/error:")
    done = state == "done"
    with st.container(horizontal=True, gap="medium"):
        common.run_links(
            run.id,
            ("results", "masks", "selective", "try"),
            None if done else "Available once the run is done.",
        )
        common.link("launch", "Job progress", run.id, icon=":material/timelapse:")
    with st.container(horizontal=True):
        if state in RESUMABLE and st.button("Resume", icon=":material/play_arrow:", key=f"resume_{run.id}"):
            resume(run)
        if st.button("Delete…", icon=":material/delete:", key=f"delete_{run.id}"):
            runs_state.ask_delete(run.id)
    if runs_state.delete_pending(run.id):
        confirm_delete(run)


def resume(run: Run) -> None:
    from masktune_core import jobs

    try:
        jobs.start(run, store)
    except MaskTuneError as err:
        st.error(str(err))
        return
    st.toast(f"Resumed {run.id}; finished stages are kept.", icon=":material/play_arrow:")
    st.rerun()


def confirm_delete(run: Run) -> None:
    with st.container(border=True):
        st.warning(
            f"Delete **{run.config().get('name') or run.id}** and everything it produced (checkpoints, "
            "masks, predictions, saved thresholds)? This cannot be undone.",
            icon=":material/warning:",
        )
        buttons = st.container(horizontal=True)
        if buttons.button("Delete permanently", type="primary", key=f"confirm_delete_{run.id}"):
            try:
                store.delete(run.id)
            except MaskTuneError as err:
                runs_state.clear_delete()
                st.error(str(err), icon=":material/block:")
                return
            runs_state.clear_delete()
            if st.query_params.get("run") == run.id:
                del st.query_params["run"]
            st.toast(f"Deleted {run.id}", icon=":material/delete:")
            st.rerun()
        if buttons.button("Keep it", key=f"keep_{run.id}"):
            runs_state.clear_delete()
            st.rerun()


def overview(runs: list[Run], where: str) -> None:
    counts: dict[str, int] = {}
    for run in runs:
        state = run.status().get("state")
        counts[state] = counts.get(state, 0) + 1
    st.caption(
        f"{len(runs)} run{'s' if len(runs) > 1 else ''} in `{common.runs_dir_label()}`: "
        + ", ".join(f"{n} {state}" for state, n in sorted(counts.items()))
        + f". Accuracy and worst-group accuracy on {where}. Select a row to open, resume or delete a run."
    )


runs = store.list()
if not runs:
    empty_state()
    st.stop()

any_active = bool(launch_form.active_runs(runs))


@st.fragment(run_every=1.0 if any_active else None)
def runs_view() -> None:
    with common.friendly_errors("The runs table"):
        current = store.list()
        if not current:
            st.rerun()
        frame, column_config, ids, where = table(current)
        overview(current, where)
        wanted = st.query_params.get("run")
        default = [ids.index(wanted)] if wanted in ids else []
        event = st.dataframe(
            frame,
            hide_index=True,
            column_config=column_config,
            on_select="rerun",
            selection_mode="single-row",
            selection_default={"selection": {"rows": default}},
            placeholder="–",
            key=runs_state.KEY_TABLE,
        )
        runs_state.follow_selection(list(event["selection"]["rows"]) if event else [], ids)
        wanted = st.query_params.get("run")  # a run id, or a seed study's id for its row
        selected = wanted if wanted in ids else None
        members = [run for run in current if run.config().get("study") == selected]
        if selected is None:
            st.caption("No run selected.")
        elif members and selected not in {run.id for run in members}:
            study_ui.study_panel(selected, members)
        else:
            actions(store.get(selected))
        if any_active and not launch_form.active_runs(current):
            st.rerun()  # the last active run ended: a full rerun stops the timer


runs_view()
