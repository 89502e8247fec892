"""Build hook: a wheel carries the registry, the demo models and the app inside the package.

The repository keeps ``checkpoints/``, ``app/`` and ``.streamlit/`` at the top level (the
product's layout); an installed package has no repository around it, so ``build_py`` copies
them to ``simam_viz/_bundle/`` where :mod:`simam_viz.resources` reads them with
``importlib.resources``. Only what ships is copied: the registry, the demo models with their
sidecars and checksums, the app's code and examples, and its Streamlit settings; never fetched
weights that happen to sit in the checkout's ``checkpoints/``. Editable installs skip the copy:
they read the checkout itself.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

ROOT = Path(__file__).resolve().parent

# (folder in the checkout, file patterns to ship) per name in simam_viz.resources.BUNDLED
SHIPPED = {
    "checkpoints": ("checkpoints", ["registry.json", "demo/*.safetensors", "demo/*.json",
                                    "demo/SHA256SUMS"]),
    "app": ("app", ["*.py", "views/*.py", "examples/*.png", "examples/*.jpg"]),
    "streamlit": (".streamlit", ["config.toml"]),
}


class BuildWithBundle(build_py):
    """``build_py`` plus the shipped data files under ``simam_viz/_bundle``."""

    def run(self) -> None:
        super().run()
        if getattr(self, "editable_mode", False):
            return
        bundle = Path(self.build_lib) / "simam_viz" / "_bundle"
        for name, (folder, patterns) in SHIPPED.items():
            source = ROOT / folder
            for pattern in patterns:
                for path in sorted(source.glob(pattern)):
                    target = bundle / name / path.relative_to(source)
                    target.parent.mkdir(parents=True, exist_ok=True)
                    shutil.copyfile(path, target)


setup(cmdclass={"build_py": BuildWithBundle})
