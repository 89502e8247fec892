"""SimAM-Viz web app: a thin Streamlit shell over ``simam_viz``.

Widgets pick an image, models and settings; ``simam_viz.service`` runs (or recalls) one
analysis per model; everything on screen is drawn from those cached arrays, so display-only
changes (block, colour map, alpha, channel views) never run a model.
"""

from __future__ import annotations

import io
import tempfile
import zipfile
from pathlib import Path

import numpy as np
import streamlit as st
import torch

from simam_viz import catalog, charts, figures
from simam_viz.cam_methods import METHODS
from simam_viz.errors import SimamVizError
from simam_viz.export import ExportRequest, write_exports
from simam_viz.images import MAX_BYTES, image_sha256, load_image
from simam_viz.models import STAGE_BLOCKS
from simam_viz.registry import checkpoints_dir
from simam_viz.service import AnalysisKey, Service, target_for

EXAMPLES = Path(__file__).resolve().parent / "examples"
UPLOAD_TYPES = ["png", "jpg", "jpeg", "webp", "bmp", "gif"]
COLORMAPS = ["jet", "turbo", "inferno", "viridis", "magma"]
LAMBDAS = [1e-4, 1e-3, 1e-2, 0.1, 0.5, 1.0, 10.0]
ANY_CLASS = "Any class…"
TOP1 = "Each model's top-1"

ABOUT = """
**SimAM** gives every neuron of a feature map its own weight, with no parameters to learn.
For a neuron *t* in a channel, it asks how well *t* can be told apart from the other neurons
of that channel by a straight line: the paper writes this as an energy function whose minimum
has a closed form, `e* = 4(σ² + λ) / ((t − μ)² + 2σ² + 2λ)`, where μ and σ² are the channel's
mean and variance. A neuron that stands out from its neighbours has a *low* energy, so
`1/e*` measures its importance; a sigmoid squashes it into a weight in (0.5, 1), and the
features are multiplied by these weights. λ regularises: larger λ flattens the weights.

**The maps.** *Grad-CAM* weights each channel of a layer by the mean gradient of the class
score and sums them: where the layer's evidence for the class lies.
*Before SimAM* uses the features entering the module (the 3×3 convolution's output),
*after SimAM* the refined features. *Attention (channel mean)* is SimAM's 3-D weights
averaged over channels. *Grad-CAM on attention* treats the weights themselves as the layer.
SE and ECA weight whole channels (one number each, the *excitation*); CBAM has a channel gate
and a spatial map; SimAM's weights differ per neuron, in 3-D.
"""


@st.cache_resource
def get_service() -> Service:
    """One service (concurrency bound + result cache) shared by every session."""
    return Service()


@st.cache_resource(show_spinner="Loading model…", max_entries=12)
def get_model(key: str, version: tuple[int, ...], device: str,
              _item: catalog.CatalogItem) -> torch.nn.Module:
    """Models are loaded once per (checkpoint, file version, device) and shared.

    ``version`` (``catalog.file_version``) changes when the file is replaced, so a new file
    under an old name is loaded afresh; ``_item`` is not hashed, it says which file to read.
    """
    return catalog.load(_item, device)


@st.cache_resource
def loaded_versions() -> dict[tuple[str, str], tuple[int, ...]]:
    """The file version each (checkpoint path, device) was last loaded from, for all sessions.

    A file deleted after it was loaded keeps serving the loaded model (looked up under this
    version) until the catalog, re-read every 20 s, stops offering it.
    """
    return {}


@st.cache_data(ttl=20, show_spinner=False)
def list_checkpoints(folder: str) -> list[catalog.CatalogItem]:
    """The catalog, re-read every 20 s so files dropped into checkpoints/ appear."""
    return catalog.available(folder)


def device_choices() -> list[str]:
    return ["auto", "cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def read_input() -> tuple[bytes, str] | None:
    """The chosen image's bytes and name (upload or bundled example)."""
    st.sidebar.header("Image")
    mode = st.sidebar.radio("Source", ["Example", "Upload"], horizontal=True, key="source")
    if mode == "Upload":
        upload = st.sidebar.file_uploader("Upload an image", type=UPLOAD_TYPES, key="upload")
        if upload is None:
            st.info("Upload a JPEG, PNG, WebP, BMP or GIF image (up to 10 MB), or pick an example.")
            return None
        if upload.size > MAX_BYTES:
            raise SimamVizError(f"{upload.name}: over the {MAX_BYTES // 2**20} MB upload limit")
        return upload.getvalue(), upload.name
    examples = sorted(p.name for p in EXAMPLES.glob("*") if p.suffix in (".png", ".jpg"))
    if not examples:
        st.info("No bundled examples found; upload an image instead.")
        return None
    name = st.sidebar.selectbox("Example", examples, key="example")
    return (EXAMPLES / name).read_bytes(), name


def choose_models() -> list[catalog.CatalogItem]:
    st.sidebar.header("Models")
    items = list_checkpoints(str(checkpoints_dir()))
    if not items:
        raise SimamVizError("no checkpoints found: add files to checkpoints/ (see README)")
    labels = {item.key: item.label for item in items}
    default = [i.key for i in items if i.source == "demo"][:3] or [items[0].key]
    keys = st.sidebar.multiselect("Compare", list(labels), default=default,
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
            model = get_model(item.key, version, device, item)
        except SimamVizError as exc:
            problems.append(str(exc))
            continue
        except OSError as exc:  # deleted or unreadable between the checks and the read
            problems.append(f"{item.path.name}: cannot be read ({type(exc).__name__})")
            continue
        known[(str(item.path), device)] = version
        kept.append(item)
        models.append(model)
    return kept, models, problems


def settings() -> dict:
    st.sidebar.header("Display")
    methods = {m.name: m.title for m in METHODS.values()}
    return {
        "method": st.sidebar.selectbox("CAM method", list(methods), format_func=methods.get,
                                       key="method"),
        "colormap": st.sidebar.selectbox("Colour map", COLORMAPS, key="colormap"),
        "alpha": st.sidebar.slider("Overlay alpha", 0.0, 1.0, 0.5, 0.05, key="alpha"),
        "shared": st.sidebar.checkbox("One colour scale for all models", key="shared"),
        "lambda": st.sidebar.select_slider("SimAM λ (inference-time)", LAMBDAS, value=0.1,
                                           key="lambda"),
    }


def run(items, models, data: bytes, image, device: str, target: str | None, opts: dict):
    service = get_service()
    sha = image_sha256(data)
    results = []
    for item, model in zip(items, models, strict=True):
        info = model.simam_viz
        lam = opts["lambda"] if info.attention == "simam" else None
        key = AnalysisKey(sha, item.key, info.sha256 or "", device, target_for(model, target),
                          opts["method"], lam)
        with st.spinner(f"Analysing with {info.name}…"):
            result, cached = service.analysis(key, model, image)
        results.append((result, cached))
    return results


def show_timings(results, device: str) -> None:
    parts = []
    for result, cached in results:
        ms = result.timings.get("total", 0.0) * 1000
        parts.append(f"{result.model_name}: {'cached' if cached else f'{ms:.0f} ms'}")
    st.caption(f"Device **{device}** · " + " · ".join(parts))


def pick_target(results) -> str | None:
    first = results[0][0]
    options = [TOP1] + [p.name for p in first.predictions] + [ANY_CLASS]
    choice = st.sidebar.selectbox("Explain class", options, key="target")
    if choice == TOP1:
        return None
    if choice == ANY_CLASS:
        classes = sorted(st.session_state.get("_classes", []))
        return st.sidebar.selectbox("Class (by name)", classes, key="any_class")
    return choice


def shared_maps(results, block: str, where: str, shared: bool) -> list[np.ndarray]:
    if not shared:
        return [r.cam(block, where) for r in results]
    raws = [r.raw_cam(block, where) for r in results]
    top = max(float(r.max()) for r in raws) or 1.0
    return [r / top for r in raws]


def view_compare(results, opts: dict) -> None:
    st.subheader("Compare models (the paper's Figure 1)")
    res = [r for r, _ in results]
    maps = shared_maps(res, "layer4.2", "output", opts["shared"])
    cols = st.columns(len(res) + 1)
    cols[0].image(res[0].image, caption="Input (as the models see it)", width="stretch",
                  output_format="PNG")
    for col, r, cam in zip(cols[1:], res, maps, strict=True):
        col.image(figures.overlay(r.image, cam, colormap=opts["colormap"], alpha=opts["alpha"]),
                  caption=f"{r.model_name} → {r.target_name}", width="stretch")
        col.markdown("\n".join(f"{i + 1}. {p.name} — {p.probability:.1%}"
                               for i, p in enumerate(r.predictions)))
        for note in r.notes:
            if note.startswith("layer4.2/output"):
                col.caption(note)
    tops = {r.predictions[0].name for r in res}
    if len(tops) > 1:
        st.warning("The models disagree on the top-1 class: " + ", ".join(sorted(tops)))


def view_simam(results, opts: dict) -> None:
    st.subheader("Inside SimAM (the paper's Figure 6)")
    simams = [r for r, _ in results if r.arch == "simam_resnet50"]
    if not simams:
        st.info("Select a SimAM-ResNet-50 in the sidebar to look inside its attention.")
        return
    names = [r.model_name for r in simams]
    r = simams[names.index(st.selectbox("SimAM model", names, key="simam_model"))]
    c1, c2 = st.columns(2)
    stage = c1.selectbox("Stage", [1, 2, 3, 4], index=3, key="stage")
    index = c2.select_slider("Block", list(range(STAGE_BLOCKS[stage - 1])),
                             value=STAGE_BLOCKS[stage - 1] - 1, key=f"block{stage}")
    block = f"layer{stage}.{index}"
    st.session_state["block"] = block
    weights, mean_map = r.attention(block)
    style = {"colormap": opts["colormap"], "alpha": opts["alpha"]}
    att = figures.overlay(r.image, _unit(mean_map), colormap="viridis", alpha=1.0)
    panels = [
        (figures.overlay(r.image, r.cam(block, "before"), **style), "Grad-CAM before SimAM"),
        (figures.overlay(r.image, r.cam(block, "after"), **style), "Grad-CAM after SimAM"),
        (att, f"Attention, channel mean ({mean_map.min():.3f}–{mean_map.max():.3f})"),
        (figures.overlay(r.image, r.cam(block, "attention"), **style), "Grad-CAM on attention"),
    ]
    st.session_state["panels"] = [(cap, arr) for arr, cap in panels]
    for col, (arr, cap) in zip(st.columns(4), panels, strict=True):
        col.image(arr, caption=f"{cap} · {block}", width="stretch")
    st.caption(f"λ = {r.simam_lambda} · explaining '{r.target_name}' · weights {weights.shape}")
    st.markdown("**Depth strip** — Grad-CAM after SimAM, block by block")
    blocks = [f"layer{s + 1}.{b}" for s, n in enumerate(STAGE_BLOCKS) for b in range(n)]
    for start in range(0, 16, 8):
        for col, b in zip(st.columns(8), blocks[start : start + 8], strict=True):
            col.image(figures.overlay(r.image, r.cam(b, "after"), **style), caption=b,
                      width="stretch")


def _unit(arr: np.ndarray) -> np.ndarray:
    lo, hi = float(arr.min()), float(arr.max())
    return (arr - lo) / (hi - lo) if hi > lo else np.zeros_like(arr)


def view_channels(results) -> None:
    st.subheader("Channels")
    block = st.session_state.get("block", "layer4.2")
    res = [r for r, _ in results]
    simam = next((r for r in res if r.arch == "simam_resnet50"), None)
    se = next((r for r in res if r.arch == "se_resnet50"), None)
    st.caption(f"Block {block} (choose it in 'Inside SimAM')")
    if simam is not None:
        weights, _ = simam.attention(block)
        means = simam.channel_weights(block)
        k = st.slider("Top-k channels", 1, min(16, len(means)), min(8, len(means)), key="topk")
        st.plotly_chart(charts.channel_maps(weights, means, top_k=k), width="stretch")
        left, right = st.columns(2)
        left.plotly_chart(charts.channel_bars(means, f"SimAM channel means · {block}"),
                          width="stretch")
        if se is not None:
            right.plotly_chart(charts.channel_bars(se.channel_weights(block),
                                                   f"SE excitation · {block}", color="#ff7f0e"),
                               width="stretch")
        else:
            right.info("Add an SE-ResNet-50 to compare its excitation vector.")
    elif se is not None:
        st.plotly_chart(charts.channel_bars(se.channel_weights(block), f"SE excitation · {block}",
                                            color="#ff7f0e"), width="stretch")
    else:
        st.info("Per-channel weights need a SimAM or SE model.")


def view_export(items, models, results, data: bytes, name: str, opts: dict) -> None:
    st.subheader("Export")
    res = [r for r, _ in results]
    stem = Path(name).stem or "image"
    maps = shared_maps(res, "layer4.2", "output", opts["shared"])
    st.markdown("**Panels (PNG, native resolution)**")
    cols = st.columns(max(2, len(res)))
    for i, (col, r, cam) in enumerate(zip(cols, res, maps, strict=False)):
        png = figures.panel_png(figures.overlay(r.image, cam, colormap=opts["colormap"],
                                                alpha=opts["alpha"]))
        col.download_button(f"{r.model_name} Grad-CAM", png, f"{stem}_cam_{i}.png", "image/png",
                            key=f"dl_panel_{i}")
    for i, (cap, arr) in enumerate(st.session_state.get("panels", [])):
        st.download_button(cap, figures.panel_png(arr), f"{stem}_fig6_panel{i}.png",
                           "image/png", key=f"dl_fig6_{i}")
    block = st.session_state.get("block", "layer4.2")
    request = ExportRequest(block=block, method=opts["method"], simam_lambda=opts["lambda"],
                            colormap=opts["colormap"], alpha=opts["alpha"],
                            shared_scale=opts["shared"], target=res[0].target_name)
    st.markdown("**Composites (300 dpi) and everything as a zip**")
    c1, c2, c3 = st.columns(3)
    c1.download_button("Figure 1 (PNG)", lambda: _composite(res, request, "figure1"),
                       f"{stem}_figure1.png", "image/png", key="dl_fig1")
    if any(r.arch == "simam_resnet50" for r in res):
        c2.download_button("Figure 6 (PNG)", lambda: _composite(res, request, "figure6"),
                           f"{stem}_figure6.png", "image/png", key="dl_fig6")
    c3.download_button("All figures + manifest + arrays (zip)",
                       lambda: _zip(res, models, request, stem, image_sha256(data)),
                       f"{stem}_simam_viz.zip", "application/zip", key="dl_zip")


def _composite(res, request: ExportRequest, prefix: str) -> bytes:
    figs = _render(res, request)
    name = next(k for k in figs if k.startswith(prefix))
    return figures.figure_to_png(figs[name], dpi=300)


def _render(res, request: ExportRequest):
    from simam_viz.export import render

    return render(res, request)


def _zip(res, models, request: ExportRequest, stem: str, sha: str) -> bytes:
    buf = io.BytesIO()
    with tempfile.TemporaryDirectory() as tmp:
        files = write_exports(res, models, request, Path(tmp), stem, sha, npz=True)
        with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
            for path in files + sorted(Path(tmp).glob("*.json")):
                zf.write(path, path.name)
    return buf.getvalue()


def main() -> None:
    st.set_page_config(page_title="SimAM-Viz", layout="wide")
    st.title("SimAM-Viz")
    st.caption("What do ResNet-50, SE-ResNet-50 and SimAM-ResNet-50 look at?")
    picked = read_input()
    items = choose_models()
    st.sidebar.header("Device")
    device_name = st.sidebar.selectbox("Run on", device_choices(), key="device")
    device = "cuda" if device_name == "cuda" or (
        device_name == "auto" and torch.cuda.is_available()) else "cpu"
    st.sidebar.markdown(f"Running on **{device.upper()}**")
    opts = settings()
    if picked is None:
        return
    data, name = picked
    image = load_image(data)
    items, models, problems = load_models(items, device)
    for problem in problems:
        st.error(problem)
    if not models:
        return
    st.session_state["_classes"] = list(models[0].simam_viz.class_names)
    first = run(items, models, data, image, device, None, opts)
    target = pick_target(first)
    results = first if target is None else run(items, models, data, image, device, target, opts)
    show_timings(results, device)
    tabs = st.tabs(["Compare models", "Inside SimAM", "Channels", "Export", "About"])
    with tabs[0]:
        view_compare(results, opts)
    with tabs[1]:
        view_simam(results, opts)
    with tabs[2]:
        view_channels(results)
    with tabs[3]:
        view_export(items, models, results, data, name, opts)
    with tabs[4]:
        st.markdown(ABOUT)


try:
    main()
except SimamVizError as exc:
    st.error(str(exc))
except Exception as exc:  # never a traceback in the page; the session stays usable
    st.error(f"Something went wrong ({type(exc).__name__}); please try again.")
