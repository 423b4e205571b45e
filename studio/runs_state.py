"""The Runs page's session state: a pending delete confirmation and the table's last row selection.

Which run is selected is the URL's ``?run=``, not session state, so a link or a refresh keeps it; these
keys only hold what a browser session does between two reruns.
"""

from __future__ import annotations

import streamlit as st

KEY_CONFIRM_DELETE = "confirm_delete"
KEY_TABLE = "runs_table"
KEY_TABLE_ROWS = "runs_table_rows"


def ask_delete(run_id: str) -> None:
    st.session_state[KEY_CONFIRM_DELETE] = run_id


def delete_pending(run_id: str) -> bool:
    return st.session_state.get(KEY_CONFIRM_DELETE) == run_id


def clear_delete() -> None:
    st.session_state.pop(KEY_CONFIRM_DELETE, None)


def follow_selection(rows: list[int], ids: list[str]) -> None:
    """Mirror a click on a table row into the URL's ``?run=``.

    Only a change of the table's own selection counts: row positions shift when a new run appears, so
    they are never used as the selection themselves.
    """
    if rows == st.session_state.get(KEY_TABLE_ROWS):
        return
    st.session_state[KEY_TABLE_ROWS] = rows
    if rows and rows[0] < len(ids):
        st.query_params["run"] = ids[rows[0]]
    elif "run" in st.query_params:
        del st.query_params["run"]
