"""The image to analyse: an upload or a bundled example, and what happened to a lost upload.

A page whose server went away (a replica died, a restart) comes back as a fresh session with
an empty uploader; the upload's short id in the page's URL lets the new session say so
instead of silently showing the example.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from pathlib import Path

import streamlit as st
from paths import DEFAULT_EXAMPLE, EXAMPLES
from PIL import Image
from upload_guard import refusal_for
from widgets import session_id

from simam_viz.errors import SimamVizError
from simam_viz.images import MAX_BYTES, load_image
from simam_viz.serving.service import shared_service

__all__ = ["decoded", "mark_upload", "read_input", "rerun_on_reconnect"]

LOG = logging.getLogger("simam_viz.app")
UPLOAD_TYPES = ["png", "jpg", "jpeg", "webp", "bmp", "gif"]
KEEP_SIDE = 1024  # longer side of the decoded copy the app keeps of an upload
LOST_UPLOAD = ("Your uploaded image was lost with the server it was on; "
               "please upload it again.")
RELOADED_UPLOAD = ("Your uploaded image is not kept when the page is reloaded; "
                   "please upload it again.")


def decoded(sha: str, data: bytes) -> Image.Image:
    """The decoded image for these bytes, at most ``KEEP_SIDE`` pixels on its longer side.

    The models look at a 161-224 px crop and the screen and exports show that crop, so a
    40 MP upload is never kept at full size: the shared service decodes it once (in one of
    its slots, since a large decode is heavy work) into a byte-bounded cache. Errors are not
    cached: a bad file fails each time.
    """
    image, _ = shared_service().compute(("decode", sha), lambda: load_image(
        data, max_side=KEEP_SIDE), what="decode", session=session_id())
    return image


@st.cache_resource
def uploads_seen() -> OrderedDict[str, None]:
    """Short ids of the uploads this server process has analysed (bounded), for all sessions:
    a page that comes back with ``?upload=ID`` lost its upload to a reload if this process
    saw it, and with a server that is gone otherwise."""
    return OrderedDict()


def mark_upload(sha: str) -> None:
    """Put the upload's short id in the page's URL: a page that reconnects (to this server
    after a reload, or to another after this one died) can then say what happened."""
    short = sha[:16]
    seen = uploads_seen()
    seen[short] = None
    while len(seen) > 4096:
        seen.popitem(last=False)
    if st.query_params.get("upload") != short:
        st.query_params["upload"] = short


def _lost_upload_note() -> None:
    """Say so when this fresh session's page had an upload that the server no longer holds."""
    short = st.query_params.get("upload")
    if short is None or "_last_upload" in st.session_state or st.session_state.get(
            _uploader_key()):
        return
    st.warning(RELOADED_UPLOAD if short in uploads_seen() else LOST_UPLOAD)
    LOG.info("a page came back without its upload %s", short)
    del st.query_params["upload"]
    # A fresh uploader: the browser still shows the lost file's chip, whose file this server
    # never had; replacing it (a delete, then the upload) right after a reconnect sometimes
    # left the new file without its rerun (Streamlit 1.67's frontend), so the page showed the
    # example under the new file's chip. A new key gives an empty uploader instead.
    st.session_state["_uploader_generation"] = st.session_state.get(
        "_uploader_generation", 0) + 1


def _uploader_key() -> str:
    """The uploader's widget key: a new one after a lost upload (see ``_lost_upload_note``)."""
    generation = st.session_state.get("_uploader_generation", 0)
    return "upload" if generation == 0 else f"upload{generation}"


@st.fragment(run_every=300)
def rerun_on_reconnect() -> None:
    """Draws nothing; it exists for its ``run_every``.

    When a page loses its server (a replica died, a restart) Streamlit's frontend reconnects,
    but it asks for a script run only if the page has a ``run_every`` fragment (or its last
    run was a fragment run): otherwise the page keeps its old figures, whose files the new
    server never had, and says nothing until the visitor's next click. With this fragment the
    page runs at once on the new server and says what happened to the upload.
    """


def _use(source: str) -> None:
    st.session_state["_source"] = source
    if source == "example":
        st.session_state.pop("_last_upload", None)
        st.query_params.pop("upload", None)


def _example_label(name: str) -> str:
    stem = Path(name).stem
    kind, _, rest = stem.partition("_")
    if kind == "scene":
        return f"Scene: {rest.replace('_', ' ')}"
    return f"Photo: {rest.replace('_', ' ')} (needs ImageNet weights)"


def read_input() -> tuple[bytes, str, bool] | None:
    """The chosen image's bytes, name and whether it is an upload (else an example)."""
    examples = sorted(p.name for p in EXAMPLES.glob("*") if p.suffix in (".png", ".jpg"))
    # scenes the demo models know first, then the photographs that need ImageNet weights
    examples.sort(key=lambda n: (not n.startswith("scene_"), n))
    _lost_upload_note()
    refused = refusal_for(session_id())
    if refused:
        st.warning(refused)
    left, right = st.columns([3, 2])
    upload = left.file_uploader("Upload an image (JPEG, PNG, WebP, BMP or GIF, up to 10 MB)",
                                type=UPLOAD_TYPES, key=_uploader_key(), on_change=_use,
                                args=("upload",))
    example = None
    if examples:
        index = examples.index(DEFAULT_EXAMPLE) if DEFAULT_EXAMPLE in examples else 0
        example = right.selectbox("…or try an example", examples, index=index,
                                  format_func=_example_label, key="example", on_change=_use,
                                  args=("example",))
    from_upload = st.session_state.get("_source", "upload") == "upload"
    if upload is not None and from_upload:
        if upload.size > MAX_BYTES:
            raise SimamVizError(f"{upload.name}: over the {MAX_BYTES // 2**20} MB upload limit")
        return upload.getvalue(), upload.name, True
    last = st.session_state.get("_last_upload")
    if from_upload and last is not None:
        # The uploader is empty: either the user removed the file, or Streamlit removes the
        # old file before sending a new one, with a run in between. Showing the example there
        # would flash it and analyse it on every replacement; keep the last upload instead.
        left.button("Back to the examples", key="back_to_examples", on_click=_use,
                    args=("example",))
        return (*last, False)  # already kept
    if example is None:
        st.info("No bundled examples found; upload an image.")
        return None
    return (EXAMPLES / example).read_bytes(), example, False
