"""One rendering convention: pictures (numpy/PIL), matplotlib figures and plotly charts apart.

``pictures.py`` draws pixels; every ``*figures.py`` module builds matplotlib figures for
export and never imports plotly (an export must not pay for, or depend on, the browser's
charting library); every ``*charts.py`` module builds plotly figures for the screen. The
checks are static (the modules' import statements, found with ``ast``) and, for what an
import really loads, run in a fresh interpreter. Also here: the one dpi check and the one
NaN-to-null JSON conversion that every JSON writer goes through.
"""

from __future__ import annotations

import ast
import datetime
import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from matplotlib.figure import Figure

from simam_viz import cli
from simam_viz.errors import SimamVizError
from simam_viz.rendering import figures, trust_figures
from simam_viz.rendering.figures import DPI_RANGE, check_dpi, figure_to_png, write_manifest
from simam_viz.rendering.jsonsafe import to_json_safe

RENDERING = Path(figures.__file__).parent
FIGURE_MODULES = sorted(RENDERING.glob("*figures.py"))
CHART_MODULES = sorted(RENDERING.glob("*charts.py"))
NO_PLOTLY = ["export", "pictures", *(p.stem for p in FIGURE_MODULES)]


def _imports(path: Path) -> set[str]:
    """Every module named by an import statement anywhere in ``path`` (functions included)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    names = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    names |= {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
    return names


def _loaded_after_import(modules: list[str], probe: str) -> dict[str, bool]:
    """For each module, imported in this order in a fresh interpreter: is ``probe`` loaded
    once it has been imported? (Order matters only after the first True.)"""
    code = (
        "import importlib, json, sys\n"
        f"seen = {{}}\n"
        f"for name in {modules!r}:\n"
        "    importlib.import_module(f'simam_viz.rendering.{name}')\n"
        f"    seen[name] = {probe!r} in sys.modules\n"
        "print(json.dumps(seen))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120, check=True)
    return json.loads(done.stdout)


def test_the_families_exist() -> None:
    assert {p.stem for p in FIGURE_MODULES} >= {"figures", "neuron_figures", "trust_figures"}
    assert {p.stem for p in CHART_MODULES} >= {"charts", "neuron_charts", "trust_charts"}


def test_no_export_module_loads_plotly() -> None:
    seen = _loaded_after_import(NO_PLOTLY, "plotly")
    assert seen == dict.fromkeys(NO_PLOTLY, False)


def test_pictures_load_neither_matplotlib_figures_nor_plotly() -> None:
    names = _imports(RENDERING / "pictures.py")
    assert not {n for n in names if n.split(".")[0] in {"plotly", "torch", "streamlit"}}
    assert not names & {"matplotlib.figure", "matplotlib.pyplot"}
    for probe in ("matplotlib.figure", "plotly"):
        assert _loaded_after_import(["pictures"], probe) == {"pictures": False}, probe


@pytest.mark.parametrize("path", FIGURE_MODULES, ids=lambda p: p.stem)
def test_figure_modules_import_no_plotly(path: Path) -> None:
    names = _imports(path)
    assert not {n for n in names if n.split(".")[0] == "plotly"}
    assert not {n for n in names if n.endswith("charts")}  # charts import plotly


@pytest.mark.parametrize("path", CHART_MODULES, ids=lambda p: p.stem)
def test_chart_modules_return_plotly_figures(path: Path) -> None:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    assert "plotly.graph_objects" in _imports(path)
    returns = {n.name: ast.unparse(n.returns) for n in tree.body
               if isinstance(n, ast.FunctionDef) and not n.name.startswith("_") and n.returns}
    figures_returned = {name: r for name, r in returns.items() if "Figure" in r}
    assert figures_returned, f"{path.stem} builds no chart"
    assert all(r.startswith("go.Figure") for r in figures_returned.values()), figures_returned
    assert "matplotlib.figure" not in _imports(path)


def test_a_chart_is_a_plotly_figure_and_an_export_a_matplotlib_one() -> None:
    import plotly.graph_objects as go

    from simam_viz.rendering import trust_charts

    faith = {"fractions": [0.0, 0.5, 1.0], "deletion_curve": [0.9, 0.4, 0.1],
             "insertion_curve": [0.1, 0.5, 0.9], "deletion_auc": 0.45, "insertion_auc": 0.5,
             "target_name": "dog"}
    assert isinstance(trust_charts.curves_chart(faith), go.Figure)
    steps = [{"layer": "fc", "spearman": 0.5, "ssim": math.nan, "hog": None}]
    chart = trust_charts.sanity_chart(steps)
    assert [list(t.y) for t in chart.data] == [[0.5], [None], [None]]  # NaN and None: gaps
    assert math.isnan(trust_figures.sanity_series(steps, "hog")[0])  # matplotlib's gap
    fig = figures.depth_strip(np.zeros((8, 8, 3), np.uint8), {"b": np.zeros((8, 8))})
    assert isinstance(fig, Figure)


# --- one dpi check --------------------------------------------------------------------------


@pytest.mark.parametrize("dpi", [DPI_RANGE[0], 72, 300.5, DPI_RANGE[1]])
def test_check_dpi_accepts_the_range(dpi: float) -> None:
    assert check_dpi(dpi) == float(dpi)


@pytest.mark.parametrize("dpi", [0, 29, 1201, -300, math.nan, math.inf, "high", None])
def test_check_dpi_refuses_outside_with_one_line(dpi: object) -> None:
    with pytest.raises(SimamVizError, match=r"^dpi must be (a number )?between 30 and 1200") as e:
        check_dpi(dpi)
    assert "\n" not in str(e.value)


def test_library_and_cli_refuse_a_dpi_in_the_same_words(tmp_path: Path, capsys) -> None:
    with pytest.raises(ValueError) as library:
        figure_to_png(Figure(), dpi=5)
    # explain checks --dpi before it opens the image, so no model or image is needed
    code = cli.main(["explain", str(tmp_path / "missing.png"), "--channel", "0", "--y", "0",
                     "--x", "0", "--out", str(tmp_path / "o"), "--dpi", "5"])
    err = capsys.readouterr().err
    assert code == 2
    assert err == f"error: --{library.value}\n"
    assert err == "error: --dpi must be between 30 and 1200, got 5\n"


def test_no_other_module_checks_dpi() -> None:
    """The numbers of the range appear in figures.py only (the CLI asks check_dpi)."""
    package = RENDERING.parent
    found = [p.relative_to(package).as_posix() for p in package.rglob("*.py")
             if "1200" in p.read_text(encoding="utf-8")]
    assert found == ["rendering/figures.py"]


# --- one NaN-to-null JSON conversion ---------------------------------------------------------


def test_to_json_safe_gives_strict_json() -> None:
    value = {
        "nan": math.nan, "inf": -math.inf, "f32": np.float32(0.25), "i64": np.int64(3),
        "array": np.array([[1.0, np.nan]]), "tuple": (1, (2, math.inf)), "set": {"b", "a"},
        "path": Path("x") / "y.png", "when": datetime.date(2024, 5, 1), "flag": np.bool_(True),
        3: "int key", np.int64(4): "numpy key", None: "none key",
        "nested": [{"hog": math.nan, "layer": "fc"}],
    }
    safe = to_json_safe(value)
    assert json.loads(json.dumps(safe, allow_nan=False)) == {
        "nan": None, "inf": None, "f32": 0.25, "i64": 3, "array": [[1.0, None]],
        "tuple": [1, [2, None]], "set": ["a", "b"], "path": "x/y.png", "when": "2024-05-01",
        "flag": True, "3": "int key", "4": "numpy key", "null": "none key",
        "nested": [{"hog": None, "layer": "fc"}],
    }
    assert list(safe)[:3] == ["nan", "inf", "f32"]  # order kept: files stay diffable


def test_every_json_writer_turns_nan_into_null(tmp_path: Path) -> None:
    from simam_viz.studies.evaluation import write_per_image

    manifest = json.loads(write_manifest(tmp_path / "m.json", {
        "lambda": math.nan, "scale": np.float32(0.5), "blocks": ("a", "b")}).read_text(),
        parse_constant=pytest.fail)
    assert manifest["lambda"] is None and manifest["scale"] == 0.5
    assert manifest["blocks"] == ["a", "b"] and "versions" in manifest

    rows = [{"model": "m", "spearman": math.nan, "per_image": [np.float32(0.5), math.inf]}]
    document = json.loads(write_per_image(rows, tmp_path / "e.json").read_text(),
                          parse_constant=pytest.fail)
    assert document["rows"] == [{"model": "m", "spearman": None, "per_image": [0.5, None]}]

    faith = {"road": math.nan, "fractions": np.array([0.0, 1.0])}
    report = trust_figures.report(faith, [{"layer": "fc", "hog": math.nan}], model="m")
    back = json.loads(json.dumps(report, allow_nan=False))
    assert back["faithfulness"] == {"road": None, "fractions": [0.0, 1.0]}
    assert back["sanity"] == [{"layer": "fc", "hog": None}]


def test_cli_explanation_json_is_strict() -> None:
    got = cli._explanation_json({"threshold": math.nan, "grid": (7, 7), "values": np.zeros(3),
                                 "weights": None, "t": np.float32(0.5)})
    assert got == {"threshold": None, "grid": [7, 7], "t": 0.5}
    json.dumps(got, allow_nan=False)
