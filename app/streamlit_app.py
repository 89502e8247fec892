"""SimAM-Viz web app: a thin Streamlit shell over ``simam_viz``.

A full script run happens only when the analyses may change (image, models, device, CAM
method, lambda, class). It runs or recalls one analysis per model in ``simam_viz.serving.service``
and hands the results to ``explore``, a fragment: everything a user does there (colour map,
alpha, shared scale, tabs, block, top-k) reruns only the fragment, and only the open tab is
drawn. On-screen pictures are JPEG bytes cached by (analysis, display settings); downloads
are built when clicked. Views get their data as arguments, never from another view's state.
"""

from __future__ import annotations

import io
import json
import logging
import sys
import tempfile
import zipfile
from collections import OrderedDict
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import streamlit as st
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))  # app/ modules (fetch_panel)

from fetch_panel import fetch_panel  # noqa: E402
from logs import setup_logging  # noqa: E402
from neuron_view import view_explain  # noqa: E402
from paths import DEFAULT_EXAMPLE, EXAMPLES  # noqa: E402
from trust_view import TrustCheck, finished_checks, view_trust  # noqa: E402
from upload_guard import refusal_for  # noqa: E402
from widgets import (  # noqa: E402
    DEFAULT_STAGE,
    choose_block,
    default_index,
    kept,
    remember,
    session_id,
)

from simam_viz.engine.analysis import Analysis  # noqa: E402
from simam_viz.engine.cam_methods import METHODS  # noqa: E402
from simam_viz.errors import SimamVizError  # noqa: E402
from simam_viz.images import MAX_BYTES, image_sha256, load_image  # noqa: E402
from simam_viz.networks.models import STAGE_BLOCKS  # noqa: E402
from simam_viz.rendering import charts, figures
from simam_viz.rendering.export import ExportRequest, render, write_exports  # noqa: E402
from simam_viz.serving.guidance import unfamiliar_image_note  # noqa: E402
from simam_viz.serving.service import analysis_key, shared_models, shared_service  # noqa: E402
from simam_viz.weights import catalog  # noqa: E402
from simam_viz.weights.registry import checkpoints_dir  # noqa: E402

LOG = logging.getLogger("simam_viz.app")
UPLOAD_TYPES = ["png", "jpg", "jpeg", "webp", "bmp", "gif"]
COLORMAPS = ["jet", "turbo", "inferno", "viridis", "magma"]
LAMBDAS = [1e-4, 1e-3, 1e-2, 0.1, 0.5, 1.0, 10.0]
TOP1 = "Each model's top-1"
VIEWS = ["Compare models", "Inside SimAM", "Explain SimAM", "Channels", "Trust", "Export",
         "About"]
BLOCKS = [f"layer{s + 1}.{b}" for s, n in enumerate(STAGE_BLOCKS) for b in range(n)]
LAST_BLOCK = BLOCKS[-1]
KEEP_SIDE = 1024  # longer side of the decoded copy the app keeps of an upload

ABOUT = """
**SimAM** gives every neuron of a feature map its own weight, with no parameters to learn.
For a neuron *t* in a channel, it asks how well *t* can be told apart from the other neurons
of that channel by a straight line: the paper writes this as an energy function whose minimum
has a closed form, `e* = 4(σ² + λ) / ((t − μ)² + 2σ² + 2λ)`, where μ and σ² are the channel's
mean and variance. A neuron that stands out from its neighbours has a *low* energy, so
`1/e*` measures its importance. Since `1/e* = (t − μ)² / (4(σ² + λ)) + 1/2` is at least 1/2,
the sigmoid puts every weight in (sigmoid(0.5), 1), about (0.62, 1); the features are
multiplied by these weights. λ regularises: larger λ flattens the weights.

**The maps.** *Grad-CAM* weights each channel of a layer by the mean gradient of the class
score and sums them: where the layer's evidence for the class lies.
*Before SimAM* uses the features entering the module (the 3×3 convolution's output),
*after SimAM* the refined features. *Attention (channel mean)* is SimAM's 3-D weights
averaged over channels. *Grad-CAM on attention* treats the weights themselves as the layer.
SE and ECA weight whole channels (one number each, the *excitation*); CBAM has a channel gate
and a spatial map; SimAM's weights differ per neuron, in 3-D.
"""


# --- caches ------------------------------------------------------------------------------


@st.cache_data(ttl=20, show_spinner=False)
def list_checkpoints(folder: str) -> list[catalog.CatalogItem]:
    """The catalog, re-read every 20 s so files dropped into checkpoints/ appear."""
    return catalog.available(folder)


@st.cache_resource
def loaded_versions() -> dict[tuple[str, str], tuple[int, ...]]:
    """The file version each (checkpoint path, device) was last loaded from, for all sessions.

    A file deleted after it was loaded keeps serving the loaded model (looked up under this
    version) until the catalog, re-read every 20 s, stops offering it.
    """
    return {}


def decoded(sha: str, data: bytes):
    """The decoded image for these bytes, at most ``KEEP_SIDE`` pixels on its longer side.

    The models look at a 161-224 px crop and the screen and exports show that crop, so a
    40 MP upload is never kept at full size: the shared service decodes it once (in one of
    its slots, since a large decode is heavy work) into a byte-bounded cache. Errors are not
    cached: a bad file fails each time.
    """
    image, _ = shared_service().compute(("decode", sha), lambda: load_image(
        data, max_side=KEEP_SIDE), what="decode", session=session_id())
    return image


@st.cache_data(max_entries=512, show_spinner=False)
def screen_jpeg(key: str, _picture: Callable[[], np.ndarray]) -> bytes:
    """On-screen JPEG of a picture, cached by ``key`` (analysis keys + display settings)."""
    return figures.jpeg_bytes(_picture())


@st.cache_data(max_entries=64, show_spinner=False)
def screen_png(key: str, _picture: np.ndarray) -> bytes:
    """Lossless on-screen PNG (the analysed crop, whose pixels users compare); zlib level 1:
    the same pixels, encoded in a third of the time."""
    return figures.panel_png(_picture, compress_level=1)


# --- inputs ------------------------------------------------------------------------------


LOST_UPLOAD = ("Your uploaded image was lost with the server it was on; "
               "please upload it again.")
RELOADED_UPLOAD = ("Your uploaded image is not kept when the page is reloaded; "
                   "please upload it again.")


@st.cache_resource
def uploads_seen() -> OrderedDict[str, None]:
    """Short ids of the uploads this server process has analysed (bounded), for all sessions:
    a page that comes back with ``?upload=ID`` lost its upload to a reload if this process
    saw it, and with a server that is gone otherwise."""
    return OrderedDict()


def _mark_upload(sha: str) -> None:
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


def choose_models() -> list[catalog.CatalogItem]:
    st.sidebar.header("Models")
    items = list_checkpoints(str(checkpoints_dir()))
    compare = st.sidebar.container()
    with st.sidebar:
        fetch_panel(checkpoints_dir(), on_fetched=list_checkpoints.clear)
    if not items:
        raise SimamVizError("no checkpoints found: add files to checkpoints/ (see README)")
    labels = {item.key: item.label for item in items}
    default = [i.key for i in catalog.default_selection(items)]
    keys = compare.multiselect("Compare", list(labels), default=default,
                               format_func=labels.get, key="models", max_selections=5)
    if not keys:
        st.info("Choose at least one model in the sidebar.")
        st.stop()
    by_key = {i.key: i for i in items}
    return [by_key[k] for k in keys]


def load_models(
    items: list[catalog.CatalogItem], device: str
) -> tuple[list[catalog.CatalogItem], list[torch.nn.Module], list[str]]:
    """The items that loaded, their models, and one line per checkpoint that did not.

    A missing or corrupt file must not take the other models off the page.
    """
    known = loaded_versions()
    pool = shared_models()
    kept, models, problems = [], [], []
    for item in items:
        try:
            version = catalog.file_version(item.path)
        except OSError:
            version = known.get((str(item.path), device))
            if version is None:
                problems.append(f"{item.path.name}: no such checkpoint file")
                continue
        try:
            model = pool.get((item.key, version, device),
                             lambda item=item: load_in_slot(item, device))
        except SimamVizError as exc:
            LOG.warning("checkpoint %s not loaded: %s", item.path, exc, exc_info=True)
            problems.append(str(exc))
            continue
        except OSError as exc:  # deleted or unreadable between the checks and the read
            LOG.warning("checkpoint %s unreadable", item.path, exc_info=True)
            problems.append(f"{item.path.name}: cannot be read ({type(exc).__name__})")
            continue
        known[(str(item.path), device)] = version
        kept.append(item)
        models.append(model)
    return kept, models, problems


def load_in_slot(item: catalog.CatalogItem, device: str) -> torch.nn.Module:
    """Load a checkpoint inside one admission slot: a load is heavy work like an analysis."""
    with shared_service().admit("load", session_id()):
        return catalog.load(item, device)


def choose_device() -> str:
    st.sidebar.header("Device")
    choices = ["auto", "cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    name = st.sidebar.selectbox("Run on", choices, key="device")
    device = "cuda" if name == "cuda" or (name == "auto" and torch.cuda.is_available()) else "cpu"
    st.sidebar.markdown(f"Running on **{device.upper()}**")
    return device


def analysis_settings(models: Sequence[torch.nn.Module],
                      items: Sequence[catalog.CatalogItem]) -> dict:
    """Settings that change the numbers (each change may run the models)."""
    st.sidebar.header("Analysis")
    methods = {m.name: m.title for m in METHODS.values()}
    method = st.sidebar.selectbox("CAM method", list(methods), format_func=methods.get,
                                  key="method")
    lam = None
    simam = next((m for m in models if m.simam_viz.attention == "simam"), None)
    if simam is not None:
        own = float(simam.simam_viz.simam_lambda or 0.1)
        choices = sorted({*LAMBDAS, own})
        item = items[list(models).index(simam)]
        # one widget state per checkpoint: each starts at the lambda it was trained with
        lam = st.sidebar.select_slider("SimAM λ (inference-time)", choices, value=own,
                                       key=f"lambda::{item.key}")
        st.sidebar.caption(f"{simam.simam_viz.name or 'SimAM'} was trained with λ = {own:g}.")
    names: list[str] = []
    for model in models:
        names += [c for c in model.simam_viz.class_names if c not in names]
    target = st.sidebar.selectbox("Explain class", [TOP1, *names], key="target")
    return {"method": method, "lambda": lam, "target": None if target == TOP1 else target}


def run(items, models, data: bytes, sha: str, device: str,
        opts: dict) -> tuple[list[tuple[Analysis, bool]], list[str]]:
    """One analysis per model, recalled from the shared cache or run once (all 16 blocks),
    and each one's cache key as text (the on-screen pictures are cached under it)."""
    service = shared_service()
    results, keys = [], []
    for item, model in zip(items, models, strict=True):
        key = analysis_key(sha, item.key, model, device, opts["target"], opts["method"],
                           opts["lambda"])
        keys.append(repr(key))
        cached = service.cache.get(key)  # checked here too so a hit never decodes the image
        if cached is not None:
            results.append((cached, True))
            continue
        with st.spinner(f"Analysing with {model.simam_viz.name}…"):
            results.append(service.analysis(key, model, decoded(sha, data), session_id()))
    return results, keys


def show_timings(results, device: str) -> None:
    parts = []
    for result, cached in results:
        ms = result.timings.get("total", 0.0) * 1000
        parts.append(f"{result.model_name}: {'cached' if cached else f'{ms:.0f} ms'}")
    st.caption(f"Device **{device}** · " + " · ".join(parts))


# --- pictures (pure functions of the results, cached as JPEG by key) ----------------------


def shared_maps(results: Sequence[Analysis], block: str, where: str,
                shared: bool) -> list[np.ndarray]:
    if not shared:
        return [r.cam(block, where) for r in results]
    raws = [r.raw_cam(block, where) for r in results]
    top = max(float(r.max()) for r in raws) or 1.0
    return [r / top for r in raws]


def _unit(arr: np.ndarray) -> np.ndarray:
    lo, hi = float(arr.min()), float(arr.max())
    return (arr - lo) / (hi - lo) if hi > lo else np.zeros_like(arr)


class Pictures:
    """On-screen overlays for one set of results and display settings, cached by key."""

    def __init__(self, results: Sequence[Analysis], keys: Sequence[str], style: dict) -> None:
        self.results, self.keys, self.style = list(results), list(keys), style
        self._tag = f"{style['colormap']}|{style['alpha']}"

    def figure1(self, i: int) -> bytes:
        """Model ``i``'s Figure 1 overlay; with ``shared`` it depends on every model's map."""
        shared = self.style["shared"]
        scope = "|".join(self.keys) if shared else self.keys[i]
        return screen_jpeg(f"fig1|{scope}|{i}|{shared}|{self._tag}",
                           lambda: figure1_panel(self.results, i, self._blend, shared))

    def figure6(self, i: int, block: str, panel: int) -> bytes:
        """Panel ``panel`` (in ``figures.FIGURE6_TITLES`` order) of model ``i``'s Figure 6."""
        tag = self._tag if FIGURE6_WHERES[panel] is not None else "viridis"
        return screen_jpeg(f"{self.keys[i]}|{block}|fig6-{panel}|{tag}",
                           lambda: figure6_panel(self.results[i], block, panel, self._blend))

    def depth(self, i: int) -> bytes:
        r = self.results[i]
        return screen_jpeg(f"{self.keys[i]}|depth|{self._tag}", lambda: figures.mosaic(
            [figures.overlay(r.image, r.cam(b, "after"), **self._blend) for b in BLOCKS],
            BLOCKS, per_row=8))

    @property
    def _blend(self) -> dict:
        return {"colormap": self.style["colormap"], "alpha": self.style["alpha"]}


def figure1_panel(results: Sequence[Analysis], i: int, blend: dict, shared: bool) -> np.ndarray:
    """Model ``i``'s Grad-CAM of the paper's Figure 1 at native resolution (screen and export)."""
    cam = shared_maps(results, LAST_BLOCK, "output", shared)[i]
    return figures.overlay(results[i].image, cam, **blend)


# the CAM tap behind each of figures.FIGURE6_TITLES; None: the attention weights themselves
FIGURE6_WHERES = ("before", "after", None, "attention")


def figure6_panel(r: Analysis, block: str, panel: int, blend: dict) -> np.ndarray:
    """One of the paper's Figure 6 panels at native resolution (the screen and export both
    draw it here); the attention panel is the channel mean on its own scale, in viridis."""
    where = FIGURE6_WHERES[panel]
    if where is None:
        return figures.overlay(r.image, _unit(r.attention(block)[1]), colormap="viridis",
                               alpha=1.0)
    return figures.overlay(r.image, r.cam(block, where), **blend)


# --- views (each gets everything it shows as arguments) ----------------------------------


def view_compare(results: Sequence[Analysis], pics: Pictures) -> None:
    st.subheader("Compare models (the paper's Figure 1)")
    cols = st.columns(len(results) + 1)
    first = results[0]
    cols[0].image(screen_png(pics.keys[0] + "|input", first.image),
                  caption="Input (as the models see it)", width="stretch",
                  output_format="PNG")  # lossless: "auto" would re-encode it as JPEG
    for i, (col, r) in enumerate(zip(cols[1:], results, strict=True)):
        col.image(pics.figure1(i), caption=f"{r.model_name} → {r.target_name}",
                  width="stretch", output_format="JPEG")
        col.markdown("\n".join(f"{k + 1}. {p.name} — {p.probability:.1%}"
                               for k, p in enumerate(r.predictions)))
        for note in r.notes:
            if note.startswith(f"{LAST_BLOCK}/output"):
                col.caption(note)
    tops = {r.predictions[0].name for r in results}
    if len(tops) > 1:
        st.warning("The models disagree on the top-1 class: " + ", ".join(sorted(tops)))


def view_simam(results: Sequence[Analysis], pics: Pictures, simam: int | None,
               block: str) -> None:
    st.subheader("Inside SimAM (the paper's Figure 6)")
    if simam is None:
        st.info("Select a SimAM-ResNet-50 in the sidebar to look inside its attention.")
        return
    r = results[simam]
    weights, mean_map = r.attention(block)
    captions = list(figures.FIGURE6_TITLES)
    captions[2] = f"Attention, channel mean ({mean_map.min():.3f}–{mean_map.max():.3f})"
    for j, (col, cap) in enumerate(zip(st.columns(4), captions, strict=True)):
        col.image(pics.figure6(simam, block, j), caption=f"{cap} · {block}", width="stretch",
                  output_format="JPEG")
    st.caption(f"{r.model_name} · {block} · λ = {r.simam_lambda} · explaining "
               f"'{r.target_name}' · weights {weights.shape}")
    st.markdown("**Depth strip** — Grad-CAM after SimAM, block by block")
    st.image(pics.depth(simam), width="stretch", output_format="JPEG")


def view_channels(results: Sequence[Analysis], simam: int | None, se: int | None,
                  block: str) -> None:
    st.subheader("Channels")
    if simam is None and se is None:
        st.info("Per-channel weights need a SimAM or SE model.")
        return
    if simam is not None:
        weights, _ = results[simam].attention(block)
        means = results[simam].channel_weights(block)
        top_channels(weights, means)
        left, right = st.columns(2)
        left.plotly_chart(charts.channel_bars(means, f"SimAM channel means · {block}"),
                          width="stretch")
        if se is None:
            right.info("Add an SE-ResNet-50 to compare its excitation vector.")
            return
        target = right
    else:
        target = st.container()
    target.plotly_chart(charts.channel_bars(results[se].channel_weights(block),
                                            f"SE excitation · {block}", color="#ff7f0e"),
                        width="stretch")


@st.fragment
def top_channels(weights: np.ndarray, means: np.ndarray) -> None:
    """The top-k slider and its chart: a top-k change redraws this chart only, not the bars."""
    kept("topk", min(8, len(means)))
    k = st.slider("Top-k channels", 1, min(16, len(means)), key="topk", on_change=remember,
                  args=("topk",))
    st.plotly_chart(charts.channel_maps(weights, means, top_k=k), width="stretch")


class Exports:
    """Download payloads, each built once per key inside one admission slot.

    Streamlit builds a download button's payload when it is clicked, on its own thread
    pool; without this every click of every visitor rebuilt a 300 dpi composite or a zip at
    once, outside the limit on heavy work. Here each payload is built by the shared service
    (one slot, one job per session, single flight) and kept in its byte-bounded export
    cache under everything it depends on.
    """

    def __init__(self, keys: Sequence[str], style: dict, block: str, stem: str) -> None:
        # the analysis keys already hold image, models, method, lambda and class
        self.scope = "|".join([*keys, style["colormap"], str(style["alpha"]),
                               str(style["shared"]), block, stem])
        self.session = session_id()  # the click runs outside the script thread

    def __call__(self, name: str, build: Callable[[], bytes]) -> Callable[[], bytes]:
        """A payload callable for ``st.download_button`` that builds ``name`` at most once."""
        def payload() -> bytes:
            data, _ = shared_service().compute(("export", self.scope, name), build,
                                               what="export", session=self.session)
            return data
        return payload


def view_export(results: Sequence[Analysis], models, style: dict, opts: dict, block: str,
                simam: int | None, data_sha: str, name: str, keys: Sequence[str],
                checks: Sequence[TrustCheck] = ()) -> None:
    st.subheader("Export")
    stem = Path(name).stem or "image"
    exports = Exports(keys, style, block, stem)
    st.markdown("**Panels (PNG, native resolution)**")
    cols = st.columns(max(2, len(results)))
    blend = {"colormap": style["colormap"], "alpha": style["alpha"]}
    for i, (col, r) in enumerate(zip(cols, results, strict=False)):
        col.download_button(f"{r.model_name} Grad-CAM", exports(f"panel{i}", lambda i=i: (
                                figures.panel_png(figure1_panel(results, i, blend,
                                                                style["shared"])))),
                            f"{stem}_cam_{i}.png", "image/png", key=f"dl_panel_{i}")
    if simam is not None:
        for j, title in enumerate(figures.FIGURE6_TITLES):
            st.download_button(
                f"{title} · {block}",
                exports(f"fig6-{j}", lambda j=j: figures.panel_png(
                    figure6_panel(results[simam], block, j, blend))),
                f"{stem}_fig6_{block}_panel{j}.png", "image/png", key=f"dl_fig6_{j}")
    request = ExportRequest(block=block, method=opts["method"], simam_lambda=opts["lambda"],
                            colormap=style["colormap"], alpha=style["alpha"],
                            shared_scale=style["shared"], target=results[0].target_name)
    st.markdown("**Composites (300 dpi) and everything as a zip**")
    c1, c2, c3 = st.columns(3)
    c1.download_button("Figure 1 (PNG)",
                       exports("figure1", lambda: _composite(results, request, "figure1")),
                       f"{stem}_figure1.png", "image/png", key="dl_fig1")
    if simam is not None:
        c2.download_button("Figure 6 (PNG)",
                           exports("figure6", lambda: _composite(results, request, "figure6")),
                           f"{stem}_figure6.png", "image/png", key="dl_fig6")
    checked = "|".join(check.stem for check in checks)
    c3.download_button("All figures + manifest + arrays (zip)",
                       exports(f"zip|{checked}", lambda: _zip(results, models, request, stem,
                                                              data_sha, checks, style)),
                       f"{stem}_simam_viz.zip", "application/zip", key="dl_zip")
    if checks:
        st.caption(f"The zip also holds {len(checks)} trust check(s) of the Trust view "
                   "(PNG + JSON each).")
    st.caption("Each file is built when its button is first clicked (a few seconds for the "
               "zip) and then kept for everyone; a busy server may ask you to click again.")


def _composite(results, request: ExportRequest, prefix: str) -> bytes:
    figs = render(results, request)
    name = next(k for k in figs if k.startswith(prefix))
    return figures.figure_to_png(figs[name], dpi=300)


def _zip(results, models, request: ExportRequest, stem: str, sha: str,
         checks: Sequence[TrustCheck] = (), style: dict | None = None) -> bytes:
    buf = io.BytesIO()
    with tempfile.TemporaryDirectory() as tmp:
        files = write_exports(results, models, request, Path(tmp), stem, sha, npz=True)
        with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
            for path in files + sorted(Path(tmp).glob("*.json")):
                zf.write(path, path.name)
            for check in checks:
                zf.writestr(f"{stem}_{check.stem}.png", check.png(style or {}))
                zf.writestr(f"{stem}_{check.stem}.json", json.dumps(
                    check.report(image_sha256=sha), indent=2, default=str))
    return buf.getvalue()


@st.fragment
def explore(results: list[Analysis], keys: list[str], models, opts: dict, data_sha: str,
            name: str, data: bytes) -> None:
    """Display settings and the open view; every widget here reruns only this fragment.

    A fragment rerun does not pass through ``main``'s error handling, so it has its own.
    """
    guarded(lambda: _explore(results, keys, models, opts, data_sha, name, data))


def _explore(results: list[Analysis], keys: list[str], models, opts: dict, data_sha: str,
             name: str, data: bytes) -> None:
    c1, c2, c3 = st.columns([2, 3, 2], vertical_alignment="bottom")
    kept("colormap", COLORMAPS[0])
    kept("alpha", 0.5)
    kept("shared", False)
    style = {
        "colormap": c1.selectbox("Colour map", COLORMAPS, key="colormap", on_change=remember,
                                 args=("colormap",)),
        "alpha": c2.slider("Overlay alpha", 0.0, 1.0, step=0.05, key="alpha",
                           on_change=remember, args=("alpha",)),
        "shared": c3.checkbox("One colour scale for all models", key="shared",
                              on_change=remember, args=("shared",)),
    }
    pics = Pictures(results, keys, style)
    simam = next((i for i, r in enumerate(results) if r.attention_kind == "simam"), None)
    se = next((i for i, r in enumerate(results) if r.attention_kind == "se"), None)
    tabs = st.tabs(VIEWS, key="view", on_change="rerun")
    shown = [view for view, tab in zip(VIEWS, tabs, strict=True) if tab.open]
    LOG.debug("render view %s", shown[0] if shown else VIEWS[0])
    draw = {
        "Compare models": lambda: view_compare(results, pics),
        "Inside SimAM": lambda: view_simam(
            results, pics, simam, choose_block() if simam is not None else LAST_BLOCK),
        "Explain SimAM": lambda: _explain(results, models, keys, simam, pics, data_sha, data),
        "Channels": lambda: view_channels(
            results, simam, se,
            choose_block() if (simam is not None or se is not None) else LAST_BLOCK),
        "Trust": lambda: view_trust(results, models, keys, lambda: decoded(data_sha, data),
                                    choose_block(), opts["method"], style),
        "Export": lambda: view_export(results, models, style, opts, _export_block(simam),
                                      simam, data_sha, name, keys, finished_checks(keys)),
        "About": lambda: st.markdown(ABOUT),
    }
    for view, tab in zip(VIEWS, tabs, strict=True):
        with tab:
            if tab.open:
                draw[view]()


def _explain(results, models, keys, simam: int | None, pics: Pictures, data_sha: str,
             data: bytes) -> None:
    block = choose_block() if simam is not None else LAST_BLOCK
    view_explain(results, models, keys, simam, lambda: decoded(data_sha, data), block,
                 lambda: pics.figure6(simam, block, 2))


def _export_block(simam: int | None) -> str:
    """The block the SimAM/Channels views last showed (their stage and block pickers)."""
    stage = st.session_state.get("_keep_stage", DEFAULT_STAGE)
    index = st.session_state.get(f"_keep_block{stage}", default_index(stage))
    return f"layer{stage}.{index}" if simam is not None else LAST_BLOCK


def main() -> None:
    st.set_page_config(page_title="SimAM-Viz", layout="wide")
    rerun_on_reconnect()
    st.title("SimAM-Viz")
    st.caption("What do ResNet-50, SE-ResNet-50 and SimAM-ResNet-50 look at?")
    picked = read_input()
    items = choose_models()
    device = choose_device()
    if picked is None:
        return
    data, name, fresh_upload = picked
    items, models, problems = load_models(items, device)
    for problem in problems:
        st.error(problem)
    if not models:
        return
    opts = analysis_settings(models, items)
    sha = image_sha256(data)
    results, keys = run(items, models, data, sha, device, opts)
    if fresh_upload:
        st.session_state["_last_upload"] = (data, name)  # analysed fine: worth keeping
        _mark_upload(sha)
    res = [r for r, _ in results]
    note = unfamiliar_image_note(res, [i.source for i in items],
                                 models[0].simam_viz.class_names)
    if note:
        st.info(note)
    shown_name = name.replace("`", "'")
    st.caption(f"Image: `{shown_name}`")
    show_timings(results, device)
    explore(res, keys, models, opts, sha, name, data)


def guarded(body: Callable[[], None]) -> None:
    """Run ``body``; a failure is one line on the page and a traceback in the server log."""
    try:
        body()
    except SimamVizError as exc:
        LOG.warning("shown to the user: %s", exc, exc_info=True)
        st.error(str(exc))
    except Exception as exc:  # never a traceback in the page; the session stays usable
        LOG.exception("unexpected error in a script run")
        st.error(f"Something went wrong ({type(exc).__name__}); please try again.")


setup_logging()
guarded(main)
