"""The JSON codec of every stored record (fusion.records): stored payloads read back and write out unchanged.

``tests/data/records`` holds payloads written by the hand-written ``to_dict`` methods that the codec replaced (commit
45344e8): a workspace model's metadata, a Hessian report, the three landscapes, a fusion report and a finished story.
Reading each and writing it again must give the same JSON, so results stored before the codec still load.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pytest

from analysis.hessian import LEGACY_PERTURBATION, HessianReport
from analysis.landscape import InterpolationResult, LandscapeConfig, PlaneResult, RandomDirectionsResult
from fusion.errors import ArchitectureError, CheckpointError, ConfigError
from fusion.models import ModelSpec
from fusion.records import Record, RecordError, from_json, to_json
from fusion.registry import FusionReport
from fusion.workspace import ModelRecord
from studies.story import Story

STORED = Path(__file__).parent / "data" / "records"
LANDSCAPE_KEYS = {"model_ids", "dataset", "config"}


def stored(name: str) -> dict[str, Any]:
    return json.loads((STORED / f"{name}.json").read_text())


def same_json(written: Any, old: Any) -> bool:
    """Equal as JSON (a stored ``null`` array entry reads back as NaN and writes back as ``null``), except for fields
    added since the old payload was written, which must hold ``null`` (their default: nothing was measured)."""
    return json.dumps(without_added(written, old), sort_keys=True) == json.dumps(old, sort_keys=True)


def without_added(written: Any, old: Any) -> Any:
    if isinstance(written, dict) and isinstance(old, dict):
        assert all(written[k] is None for k in set(written) - set(old)), "an added field must default to null"
        return {k: without_added(v, old[k]) for k, v in written.items() if k in old}
    if isinstance(written, list) and isinstance(old, list) and len(written) == len(old):
        return [without_added(w, o) for w, o in zip(written, old)]
    return written


@pytest.mark.parametrize(
    ("name", "kind", "outer"),
    [
        ("model_record", ModelRecord, set()),
        ("hessian_report", HessianReport, {"model", "dataset"}),
        ("interpolation", InterpolationResult, LANDSCAPE_KEYS),
        ("plane", PlaneResult, LANDSCAPE_KEYS),
        ("random", RandomDirectionsResult, LANDSCAPE_KEYS),
        ("fusion_report", FusionReport, set()),
        ("story", Story, set()),
    ],
)
def test_stored_payloads_round_trip_unchanged(name: str, kind: type[Record], outer: set[str]) -> None:
    payload = stored(name)
    record = kind.from_dict(payload)
    written = record.to_dict()
    if kind is HessianReport:
        assert {k: written["config"].pop(k) for k in LEGACY_PERTURBATION} == LEGACY_PERTURBATION, (
            "settings added since are read as what the old runs did"
        )
    assert same_json(written, {k: v for k, v in payload.items() if k not in outer})
    assert same_json(kind.from_dict(record.to_dict()).to_dict(), record.to_dict())


def test_stored_hessian_reads_back_its_types() -> None:
    report = HessianReport.from_dict(stored("hessian_report"))
    assert isinstance(report.top.eigenvalues, np.ndarray) and report.top.eigenvalues.dtype == np.float64
    assert report.top.eigenvectors is None
    assert report.top.space.names and all(isinstance(s, tuple) for s in report.top.space.shapes)
    assert isinstance(report.curves, tuple) and isinstance(report.density.nodes[0], np.ndarray)
    assert report.trace.tolerance == report.config.trace_tolerance
    assert report.layers and isinstance(report.layers[0].parameters, tuple)


def test_hessian_stored_before_tolerances_takes_the_config_s() -> None:
    payload = stored("hessian_report")
    del payload["trace"]["tolerance"]
    payload["config"]["trace_tolerance"] = 0.05
    assert HessianReport.from_dict(payload).trace.tolerance == 0.05


def test_infinite_single_probe_error_reads_as_none() -> None:
    payload = stored("hessian_report")
    payload["trace"]["error"] = math.inf
    assert HessianReport.from_dict(payload).trace.error is None


def test_story_steps_are_typed_and_unfinished_steps_stay_none() -> None:
    story = Story.from_dict(stored("story"))
    assert story.finished and story.parents.best.test_accuracy == 0.9
    assert story.pruning.survival[0].kept_per_parent() == {0: 1, 1: 0}
    partial = {**stored("story"), "finetune": None, "baselines": None}
    assert Story.from_dict(partial).steps_done == 3


def test_model_metadata_without_name_or_seed_is_named_by_its_id() -> None:
    payload = stored("model_record")
    del payload["name"], payload["seed"]
    record = ModelRecord.from_dict(payload)
    assert (record.name, record.seed) == (payload["id"], None)


@pytest.mark.parametrize(
    ("change", "field_name"),
    [
        ({"spec": "mlp"}, "spec"),
        ({"metrics": {"test_accuracy": "high"}}, "metrics.test_accuracy"),
        ({"parameters": "many"}, "parameters"),
        ({"normalization": {"mean": [0.5]}}, "std"),
        ({"id": 7}, "id"),
    ],
)
def test_damaged_model_metadata_is_a_checkpoint_error_naming_the_field(change: dict, field_name: str) -> None:
    with pytest.raises(CheckpointError, match=field_name.replace(".", r"\.")):
        ModelRecord.from_dict({**stored("model_record"), **change})


def test_model_spec_is_strict_about_unknown_fields_and_validates() -> None:
    spec = stored("model_record")["spec"]
    with pytest.raises(ArchitectureError, match="unknown model spec fields: depth"):
        ModelSpec.from_dict({**spec, "depth": 3})
    with pytest.raises(ArchitectureError, match="num_classes must be at least 2"):
        ModelSpec.from_dict({**spec, "num_classes": 1})
    with pytest.raises(ArchitectureError, match="input_shape"):
        ModelSpec.from_dict({**spec, "input_shape": [1, 8]})


def test_options_validate_when_read() -> None:
    with pytest.raises(ConfigError, match="resolution"):
        LandscapeConfig.from_dict({"resolution": 1})
    with pytest.raises(RecordError, match=r"LandscapeConfig\.resolution: expected an integer"):
        LandscapeConfig.from_dict({"resolution": "21"})
    assert LandscapeConfig.from_dict({"resolution": 5, "unknown": 1}) == LandscapeConfig(resolution=5)


@dataclass(frozen=True)
class Inner(Record):
    values: np.ndarray
    pair: tuple[int, str]


@dataclass(frozen=True, eq=False)
class Outer(Record):
    name: str
    mode: Literal["a", "b"]
    inner: tuple[Inner, ...]
    by_key: dict[str, list[float]]
    maybe: float | None = None
    hidden: Any = field(default="kept in memory", metadata={"stored": False})


def test_codec_round_trips_nested_records_arrays_and_non_finite_entries() -> None:
    outer = Outer("x", "b", (Inner(np.array([1.0, np.nan, np.inf]), (3, "c")),), {"k": [0.5]}, 2.0, "secret")
    data = json.loads(json.dumps(to_json(outer), allow_nan=False))
    assert "hidden" not in data and data["inner"][0]["values"] == [1.0, None, None]
    back = from_json(Outer, data)
    assert back.hidden == "kept in memory" and back.inner[0].pair == (3, "c") and back.by_key == {"k": [0.5]}
    np.testing.assert_array_equal(back.inner[0].values, [1.0, np.nan, np.nan])
    with pytest.raises(RecordError, match="Outer.mode: expected one of 'a', 'b'"):
        from_json(Outer, {**data, "mode": "c"})
    with pytest.raises(RecordError, match=r"Outer.inner\[0\].pair: expected 2 items"):
        from_json(Outer, {**data, "inner": [{"values": [], "pair": [1]}]})
    with pytest.raises(RecordError, match="missing field 'name'"):
        from_json(Outer, {k: v for k, v in data.items() if k != "name"})
