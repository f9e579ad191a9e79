"""One model's line in a results table: what the Fuse page's comparison, the Neuron Transplantation story and the
figures of both show."""

from __future__ import annotations

from dataclasses import dataclass

from fusion.records import Record
from fusion.workspace import ModelRecord


@dataclass(frozen=True)
class Score(Record):
    """One model on the test split: label, role (its colour on every page), workspace id (``None`` for models that
    are not saved), accuracy (a fraction), mean cross-entropy, parameter count and, where measured, the seconds that
    made it (a fusion's or a fine-tune's wall time)."""

    model: str
    role: str
    id: str | None
    test_accuracy: float
    test_loss: float
    parameters: int
    seconds: float | None = None

    @classmethod
    def of(cls, record: ModelRecord, role: str, seconds: float | None = None) -> Score:
        """The scores stored with a workspace model."""
        return cls(
            record.name,
            role,
            record.id,
            record.metrics.get("test_accuracy", float("nan")),
            record.metrics.get("test_loss", float("nan")),
            record.parameters,
            seconds,
        )
