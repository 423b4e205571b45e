"""Launch: configure an experiment, start it as a background job, and follow the jobs live.

The job shown on the right is the URL's ``?run=``, so a refresh or a shared link re-attaches to it.
"""

from __future__ import annotations

import streamlit as st

from masktune_core.errors import ConfigError, MaskTuneError
from masktune_core.runs import ACTIVE_STATES, Run
from studio import charts, common, launch_form, launch_state

st.title("Launch an experiment")
st.caption("ERM → saliency masks of every training image → one finetune epoch on the masked copies.")

store = common.store()
form_column, jobs_column = st.columns([5, 6], gap="large")

with form_column, common.friendly_errors("The launch form"):
    st.subheader("Configuration")
    choice, data_dir, download = launch_form.dataset_inputs()
    values = launch_form.experiment_form(choice, data_dir, download)
    if values is not None:
        try:
            started = launch_form.submit(store, values)
        except ConfigError as err:
            st.error(launch_form.error_text(err), icon=":material/error:")
        except MaskTuneError as err:
            st.error(str(err), icon=":material/error:")
        else:
            st.query_params["run"] = started[0].id  # the job picker below follows it
            study = started[0].config().get("study")
            what = f"seed study {study}: {len(started)} runs queued" if study else f"Started {started[0].id}"
            st.toast(what, icon=":material/rocket_launch:")


def queue_table(runs: list[Run]) -> None:
    """Every active job, with its place in the queue, so several launches read as a line, not a mystery."""
    from masktune_core.jobs import max_jobs

    active = launch_form.active_runs(runs)
    if not active:
        return
    positions = launch_form.queue_positions(runs)
    rows = []
    for run in reversed(active):  # oldest first: the order the queue serves them
        status = run.status()
        place = positions.get(run.id)
        rows.append(
            {
                "Run": run.config().get("name") or run.id,
                "State": f"queued · #{place} in line" if place else status.get("state"),
                "Stage": (status.get("stage") or "–").replace("_", " "),
                "Progress": 100 * float(status.get("progress") or 0.0),
                "ETA": charts.duration_text(status.get("eta_s")),
            }
        )
    slots = max_jobs()
    st.caption(
        f"{len(active)} active job{'s' if len(active) > 1 else ''}; "
        f"{slots} job{'s run' if slots > 1 else ' runs'} at a time (MASKTUNE_MAX_JOBS); others wait."
    )
    st.dataframe(
        rows,
        hide_index=True,
        column_config={"Progress": launch_form.progress_column()},
    )


def job_panel(run: Run) -> None:
    config, status = run.config(), run.status()
    state = status.get("state")
    st.markdown(f"**{config.get('name') or run.id}** · {config.get('dataset')} / {config.get('backbone')}")
    st.caption(f"Run ID `{run.id}`")
    if state == "queued":
        place = launch_form.queue_positions(common.store().list()).get(run.id)
        st.info(
            f"Queued: #{place} in line, waiting for a free job slot." if place else "Queued: starting…",
            icon=":material/hourglass_top:",
        )
    stages = launch_form.stage_plan(config)
    done = set(status.get("stages_done") or [])
    current = status.get("stage")
    if state in ACTIVE_STATES and current:
        stage_text = current.replace("_", " ")
        # status.json keeps the last training stage's epoch fields; show them only while training.
        if current.startswith(("erm", "finetune", "randmask")) and status.get("epoch"):
            stage_text += f" · epoch {status['epoch']}/{status.get('epochs')}"
        eta = status.get("eta_s")
        st.progress(
            float(status.get("progress") or 0.0),
            text=f"**{stage_text}** · {common.pct(status.get('progress'), 0)} done"
            + (f" · about {charts.duration_text(eta)} left" if eta else ""),
        )
    if stages:
        st.caption(
            "  →  ".join(
                f"✓ {s}" if s in done else (f"▶ **{s}**" if s == current and state in ACTIVE_STATES else s)
                for s in stages
            ).replace("_", " ")
        )
    if state in ACTIVE_STATES:
        if st.button("Cancel job", icon=":material/cancel:", key=f"cancel_{run.id}"):
            from masktune_core import jobs

            jobs.cancel(run)
            st.toast("Cancel requested; the job stops at its next step.", icon=":material/cancel:")
    elif state == "done":
        took = charts.duration_text(common.run_duration(status))
        st.success(f"Done in {took}.", icon=":material/task_alt:")
        with st.container(horizontal=True, gap="medium"):
            common.link("results", "Open results", run.id, icon=common.TITLES["results"][1])
            common.run_links(run.id, ("masks", "selective"))
    elif state == "cancelled":
        st.warning("Cancelled. Resume it from the **Runs** page.", icon=":material/cancel:")
    else:
        st.error(f"{state.capitalize()}: {status.get('error') or 'no message'}", icon=":material/error:")
        st.caption("Resume it from the **Runs** page; finished stages are kept.")
    events = run.events()
    if any(e.get("kind") in ("step", "epoch") for e in events):
        st.plotly_chart(
            charts.loss_figure(events, erm_total=config.get("epochs"), height=270), key=f"loss_{run.id}"
        )
        st.plotly_chart(
            charts.accuracy_figure(events, erm_total=config.get("epochs"), height=270), key=f"acc_{run.id}"
        )
        masks = [e for e in events if e.get("kind") == "masks"]
        if masks:
            st.caption(
                " · ".join(
                    f"{e['stage'].replace('_', ' ')}: {common.pct(e['mean_area'])} of pixels masked (mean)"
                    for e in masks
                )
            )
    elif state in ACTIVE_STATES:
        st.caption("Curves appear after the first training steps.")


def job_picker(runs: list[Run]) -> Run:
    """Which job the panel shows: the URL's ?run= (a link, a refresh, a launch), else the newest run.

    The labels carry no state: a select box keeps the label it was first drawn with, and a job's state
    changes while the page is open.
    """
    by_id = {run.id: run for run in runs}
    launch_state.sync_job(list(by_id))

    def label(run_id: str) -> str:
        config = by_id[run_id].config()
        created = (by_id[run_id].raw_status().get("created") or "")[:16].replace("T", " ")
        data = f"{config.get('dataset')} / {config.get('backbone')}"
        return f"{config.get('name') or run_id} · {data} · {created} UTC"

    chosen = st.selectbox(
        "Job", list(by_id), key=launch_state.KEY_JOB, format_func=label, on_change=launch_state.follow_job
    )
    if st.query_params.get("run") != chosen:
        st.query_params["run"] = chosen
    return by_id[chosen]


with jobs_column:
    st.subheader("Jobs")
    runs = store.list()
    if not runs:
        st.info(
            "No jobs yet. Choose a dataset and press **Launch**: the default (biased digits, small CNN) "
            "is bundled and takes a minute or two on two CPU cores. Jobs run in the background: you can "
            "leave this page, and a refresh finds them again.",
            icon=":material/info:",
        )
    else:
        any_active = bool(launch_form.active_runs(runs))
        chosen = job_picker(runs)

        @st.fragment(run_every=1.0 if any_active else None)
        def live() -> None:
            with common.friendly_errors("The job panel"):
                current = common.store().list()
                queue_table(current)
                if chosen is not None:
                    job_panel(chosen)
                if any_active and not launch_form.active_runs(current):
                    st.rerun()  # the last job ended: one full rerun stops the timer and refreshes the page

        live()
