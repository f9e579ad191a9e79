"""The identity of a run: everything it was given, hashed into one key stored in its model's provenance as ``run``.

Training is deterministic given the spec, dataset and recipe (seed included), and so are fusion (given the parents in
order, the method and its full options) and fine-tuning (given the model and recipe). Two runs with one key would
store the same model twice, so the pipeline returns the stored one instead and says it was reused.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any


def run_key(kind: str, **inputs: Any) -> str:
    """The sha256 (hex) of ``kind`` and ``inputs`` as canonical JSON (sorted keys, tuples as lists)."""
    text = json.dumps({"kind": kind, **inputs}, sort_keys=True, separators=(",", ":"), allow_nan=True)
    return hashlib.sha256(text.encode()).hexdigest()
