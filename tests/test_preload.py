"""Heavy libraries are imported by one thread at a time (simam_viz.preload).

The app server's warm-up thread and the first visitor's script thread import torchvision at
once; torchvision's packages import each other, and two threads entering that cycle from
different ends made one of them fail ("partially initialized module 'torchvision.transforms'"),
so the first page never rendered (seen in the restart test about one run in four).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

RACE = """
import sys, threading
from simam_viz.preload import HEAVY_MODULES, preload_libraries
errors = []
def page():  # what a script thread does: preload, then the modules that use the libraries
    try:
        preload_libraries()
        import torchvision.models.alexnet  # the end of the cycle the warm-up did not enter
        from torchvision.transforms import InterpolationMode  # noqa: F401
    except Exception as exc:
        errors.append(repr(exc))
threads = [threading.Thread(target=page) for _ in range(4)]
for t in threads: t.start()
for t in threads: t.join()
print(errors, all(m in sys.modules for m in HEAVY_MODULES))
"""


def test_concurrent_preloads_import_everything_once_without_error() -> None:
    out = subprocess.run([sys.executable, "-c", RACE], capture_output=True, text=True,
                         check=True, cwd=ROOT, timeout=300)
    assert out.stdout.strip() == "[] True"


def test_both_entry_points_preload_before_importing_the_libraries() -> None:
    page = (ROOT / "app" / "streamlit_app.py").read_text()
    assert page.index("preload_libraries()") < page.index("import torch")
    assert page.index("preload_libraries()") < page.index("from sidebar import")
    serve = (ROOT / "app" / "serve.py").read_text()
    warm = serve[serve.index("def warm("):]
    assert warm.index("preload_libraries()") < warm.index("import torch")
