"""MaskTune Studio: the router. ``streamlit run app.py`` (runs directory: $MASKTUNE_RUNS_DIR or ./runs)."""

from __future__ import annotations

import streamlit as st

from studio.common import PAGES, TITLES, assets_dir, runs_dir_label

st.set_page_config(
    page_title="MaskTune Studio",
    page_icon=str(assets_dir() / "favicon.png"),
    layout="wide",
)
st.logo(str(assets_dir() / "logo.png"), size="large", icon_image=str(assets_dir() / "mark.png"))

# The page scripts live in views/, not pages/: with a pages/ folder Streamlit serves the first request of a
# fresh server by its file-based routing, bypassing st.navigation (seen in a browser).
# (key in PAGES, url path); url paths are fixed so deep links survive renaming a file.
URL_PATHS = (
    ("runs", "runs"),
    ("launch", "launch"),
    ("results", "results"),
    ("masks", "masks"),
    ("selective", "selective"),
    ("try", "try"),
)


def start() -> None:
    """The root URL: forward to /runs, so the Runs page has one address whichever way it is reached."""
    st.switch_page(PAGES["runs"], query_params=st.query_params.to_dict())


page = st.navigation(
    [
        st.Page(start, title="MaskTune Studio", url_path="start", default=True, visibility="hidden"),
        *(
            st.Page(PAGES[key], title=TITLES[key][0], icon=TITLES[key][1], url_path=url_path)
            for key, url_path in URL_PATHS
        ),
    ]
)

with st.sidebar:
    st.caption("Runs directory")
    st.code(runs_dir_label(), language=None, wrap_lines=True)
    with st.expander("About MaskTune"):
        st.markdown(
            "MaskTune (NeurIPS 2022) stops a classifier from relying on one shortcut feature:\n\n"
            "1. **ERM**: train the model as usual.\n"
            "2. **Mask**: for every training image, blank out the region the ERM model finds most "
            "salient (XGradCAM, pixels above mean + 2 std).\n"
            "3. **Finetune**: train one epoch on the masked images, so the model has to find other "
            "evidence.\n\n"
            "RandMask, the control, finetunes on random masks of the same area."
        )

page.run()
