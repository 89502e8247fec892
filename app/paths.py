"""Where the app's bundled files are; shared by the page and the warm start (serve.py)."""

from pathlib import Path

EXAMPLES = Path(__file__).resolve().parent / "examples"
# a scene of the demo models' own classes: the first screen must show answers that make sense
DEFAULT_EXAMPLE = "scene_dog_3.png"
