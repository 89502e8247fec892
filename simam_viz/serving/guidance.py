"""What the page should tell a user about how far to trust the models' answers.

The bundled demo models know a dozen emoji-scene classes; shown a photograph they still name
one of those classes, with a confident-looking percentage. These checks turn that situation
into one plain sentence instead of leaving the user to guess why a cat is called "bicycle".
"""

from __future__ import annotations

from collections.abc import Sequence

from simam_viz.engine.analysis import Analysis

__all__ = ["UNFAMILIAR_TOP1", "unfamiliar_image_note"]

UNFAMILIAR_TOP1 = 0.5  # every model below this top-1 probability: the image is not theirs


def unfamiliar_image_note(
    results: Sequence[Analysis], sources: Sequence[str], class_names: Sequence[str]
) -> str | None:
    """One line when every model is a bundled demo model and the image is outside what they know.

    "Outside" means every top-1 probability is below ``UNFAMILIAR_TOP1`` or the models
    disagree on the top-1 class; ``sources`` are the catalog sources (``"demo"``, ...).
    """
    if not results or any(source != "demo" for source in sources):
        return None
    tops = {r.predictions[0].name for r in results}
    unsure = all(r.predictions[0].probability < UNFAMILIAR_TOP1 for r in results)
    if not unsure and len(tops) == 1:
        return None
    known = ", ".join(class_names)
    return (f"The bundled demo models know only {len(class_names)} kinds of emoji scene "
            f"({known}); this image looks like none of them, so their answers mean little. "
            "For photographs, fetch the official ImageNet weights (sidebar, 'Official ImageNet "
            "weights', or `simam-viz fetch`).")
