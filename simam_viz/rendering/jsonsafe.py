"""One conversion for every JSON the package writes: NaN becomes null, numpy becomes Python.

JSON has no NaN or infinity, yet NaN is a real answer here (a flat map's correlation, a
neuron whose separating line never crosses zero, a bootstrap over no images), and Python's
``json`` writes it as the bare token ``NaN`` that strict readers (browsers, ``jq``,
``json.loads(..., parse_constant=...)``) refuse. Manifests, trust reports, neuron
explanations, evaluation documents and the CLI's output all pass through
:func:`to_json_safe` first and are then dumped with ``allow_nan=False``, so a value that
slipped through fails loudly here instead of producing a file nobody can read.

Imports only numpy: the CLI and the studies use it without loading matplotlib or plotly.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from datetime import date
from typing import Any

import numpy as np

__all__ = ["to_json_safe"]


def _key(key: Any) -> str:
    """A mapping key as the string ``json`` would write (numpy scalars included)."""
    if isinstance(key, np.generic):
        key = key.item()
    if isinstance(key, str):
        return key
    if key is None or isinstance(key, bool | int | float):
        return json.dumps(key)  # true, 3, 0.5, null: what json itself writes for such keys
    return str(key)


def to_json_safe(value: Any) -> Any:
    """``value`` as plain JSON types: non-finite floats as None, everything else readable.

    Mappings (keys as strings, order kept) and lists, tuples and arrays are converted
    throughout; numpy scalars become Python numbers; sets become lists sorted by their text
    (so a file does not depend on hash order); dates become ISO 8601; anything else (paths,
    enums) becomes its ``str``: a manifest should stay readable rather than fail an export.
    """
    if isinstance(value, np.generic):
        value = value.item()
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Mapping):
        return {_key(k): to_json_safe(v) for k, v in value.items()}
    if isinstance(value, np.ndarray):
        return to_json_safe(value.tolist())
    if isinstance(value, list | tuple):
        return [to_json_safe(v) for v in value]
    if isinstance(value, set | frozenset):
        return [to_json_safe(v) for v in sorted(value, key=str)]
    if isinstance(value, date):
        return value.isoformat()
    return str(value)
