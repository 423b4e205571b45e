"""The Try-an-image page's session state: the image source, the sampled split and index, the widgets'
keys, and the callback that draws a random sample."""

from __future__ import annotations

import numpy as np
import streamlit as st

KEY_SOURCE = "try_source"
KEY_SPLIT = "try_split"
KEY_INDEX = "try_index"
KEY_UPLOAD = "try_upload"
KEY_OPACITY = "try_opacity"
SOURCES = {"upload": "Upload an image", "sample": "Pick a test sample"}


def default_source() -> None:
    st.session_state.setdefault(KEY_SOURCE, "upload")


def keep_split(test_splits: list[str], main: str | None) -> None:
    """A split the run has: the chosen one if still there, else the main test split, else the first."""
    if st.session_state.get(KEY_SPLIT) not in test_splits:
        st.session_state[KEY_SPLIT] = main if main in test_splits else test_splits[0]


def keep_index(size: int) -> None:
    """Bring a sample index from a larger split back inside this one."""
    st.session_state[KEY_INDEX] = min(st.session_state.get(KEY_INDEX, 0), size - 1)


def random_index(size: int) -> None:
    """The "Random sample" button's on_click."""
    st.session_state[KEY_INDEX] = int(np.random.default_rng().integers(size))
