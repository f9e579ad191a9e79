"""Analysis results as records keyed by their settings: the one record type that keeps every stored result (a
Hessian report, a landscape, an eigenvector overlap, a comparison, a story).

A result is stored with the model it describes (the first of ``models``) under
``models/<id>/results/<kind>/<key>.json``, where ``key`` hashes ``(kind, models, settings)``: the models in order
and every setting that changes the numbers (the resolved options, the data split, the sample). A run with the
same key finds the stored result; a run with other settings adds a record beside it and never replaces another.
Each record keeps its settings, the code version that made it, when it was made and how long it took, and the
command line that recomputes it.

A result stored before records existed (``results/<kind>.json``, one per kind) reads back as one record whose key
is ``legacy-<file name>`` and whose settings are what its payload says of itself.

>>> record = ResultRecord.make("hessian", ["m"], {"samples": 200, "split": "test"}, {"top": [1.5]})
>>> record.key == result_key("hessian", ["m"], {"split": "test", "samples": 200})
True
"""

from __future__ import annotations

import functools
import importlib.metadata
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from fusion.records import Record
from fusion.run_key import run_key

KEY_LENGTH = 16
LEGACY_PREFIX = "legacy-"
LEGACY_SETTINGS = ("config", "split", "dataset", "kind", "model_ids")
"""The fields of a pre-record payload that describe how it was made, shown as its settings."""


def result_key(kind: str, models: Sequence[str], settings: Mapping[str, Any]) -> str:
    """The first :data:`KEY_LENGTH` hex digits of the sha256 of ``(kind, models, settings)`` as canonical JSON."""
    return run_key(f"result:{kind}", models=list(models), settings=dict(settings))[:KEY_LENGTH]


@functools.cache
def code_version() -> str:
    """FusionLab's version and, in a git checkout, its commit: ``0.1.0+g1a2b3c4d``."""
    try:
        version = importlib.metadata.version("fusionlab")
    except importlib.metadata.PackageNotFoundError:
        version = "unknown"
    commit = git_commit(Path(__file__).resolve().parents[1] / ".git")
    return f"{version}+g{commit[:8]}" if commit else version


def git_commit(git: Path) -> str | None:
    """The commit ``HEAD`` names in the repository at ``git``, read from its files (no subprocess)."""
    try:
        head = (git / "HEAD").read_text().strip()
        if not head.startswith("ref: "):
            return head
        ref = head.removeprefix("ref: ")
        if (git / ref).is_file():
            return (git / ref).read_text().strip()
        for line in (git / "packed-refs").read_text().splitlines():
            if line.endswith(f" {ref}"):
                return line.split()[0]
    except OSError:
        return None
    return None


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="microseconds")


@dataclass(frozen=True)
class ResultRecord(Record):
    """One stored analysis result: its ``kind``, its ``key`` (:func:`result_key`), the ``models`` it describes, the
    ``settings`` that made it, when (``created``, UTC ISO 8601), how long it took (``seconds``), the ``code`` version,
    the ``command`` line that recomputes it and the result itself (``payload``)."""

    kind: str
    key: str
    models: list[str]
    settings: dict[str, Any]
    payload: dict[str, Any]
    created: str = ""
    seconds: float | None = None
    code: str = ""
    command: str | None = None

    @classmethod
    def make(
        cls,
        kind: str,
        models: Sequence[str],
        settings: Mapping[str, Any],
        payload: Mapping[str, Any],
        seconds: float | None = None,
        command: str | None = None,
    ) -> ResultRecord:
        """A new record made now by this code."""
        settings = dict(settings)
        return cls(
            kind,
            result_key(kind, models, settings),
            list(models),
            settings,
            dict(payload),
            now_iso(),
            seconds,
            code_version(),
            command,
        )

    @classmethod
    def legacy(cls, kind: str, name: str, model_id: str, payload: Mapping[str, Any], created: str) -> ResultRecord:
        """The result stored before records existed in ``results/<name>.json``, as one record (see the module
        docstring)."""
        settings = {k: payload[k] for k in LEGACY_SETTINGS if k in payload}
        models = list(payload.get("model_ids") or [model_id])
        seconds = payload.get("seconds")
        return cls(kind, f"{LEGACY_PREFIX}{name}", models, settings, dict(payload), created, seconds)

    @property
    def legacy_result(self) -> bool:
        return self.key.startswith(LEGACY_PREFIX)

    @property
    def legacy_name(self) -> str:
        return self.key.removeprefix(LEGACY_PREFIX)

    def summary(self) -> dict[str, Any]:
        """Everything but the payload: what ``python -m fusion results`` lists."""
        return {k: v for k, v in self.to_dict().items() if k != "payload"}
