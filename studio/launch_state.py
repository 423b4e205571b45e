"""The Launch page's session state: which job the panel follows (``KEY_JOB``, the job picker's value).

The URL's ``?run=`` leads: a link, a refresh or a launch sets it, and the picker follows; a choice in the
picker is written back to the URL, so the two never disagree.
"""

from __future__ import annotations

import streamlit as st

KEY_JOB = "job"


def sync_job(run_ids: list[str]) -> None:
    """Point the picker at the URL's run, or at the newest run (``run_ids[0]``) when there is none.

    Warns when the link names a run this runs directory does not hold.
    """
    wanted = st.query_params.get("run")
    if wanted in run_ids:
        if st.session_state.get(KEY_JOB) != wanted:
            st.session_state[KEY_JOB] = wanted
    elif wanted:
        st.warning(f"Run {wanted!r} from the link is not in this runs directory; showing the newest run.")
    if st.session_state.get(KEY_JOB) not in run_ids:
        st.session_state[KEY_JOB] = run_ids[0]


def follow_job() -> None:
    """The picker's on_change: its new value becomes the URL's run."""
    st.query_params["run"] = st.session_state[KEY_JOB]
