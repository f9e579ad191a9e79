"""One lookup of a method (issue 32): ``resolve(method, options)`` gives the registry entry and its typed options,
model counts are checked by the entry, a ``Literal`` option's values come from its hint, shared options are declared
once, and a fusion's details are the method's own record, stored as before."""

from __future__ import annotations

import dataclasses
import typing

import pytest
import torch

from fusion.errors import ConfigError
from fusion.methods.base import Details
from fusion.methods.cla import CLAOptions
from fusion.methods.ot import AverageOptions, FusionOptions, OTOptions
from fusion.methods.transplant import TransplantDetails
from fusion.options import choices
from fusion.registry import REGISTRY, FusionReport, fuse, resolve
from fusion.transport import TransportOptions
from tests.fusion_helpers import SMALL, randomised

X = torch.randn(16, 1, 8, 8, generator=torch.Generator().manual_seed(0))
LITERAL_FIELDS = sorted(
    {
        (spec.options, f.name)
        for spec in REGISTRY.values()
        for f in dataclasses.fields(spec.options)
        if typing.get_origin(typing.get_type_hints(spec.options)[f.name]) is typing.Literal
    },
    key=lambda pair: (pair[0].__name__, pair[1]),
)


@pytest.mark.parametrize("method", list(REGISTRY))
def test_resolve_gives_every_method_its_entry_and_options_class(method):
    resolved = resolve(method)
    assert resolved.spec is REGISTRY[method] and resolved.spec.name == method
    assert type(resolved.options) is REGISTRY[method].options
    assert resolve(method, resolved.options).options is resolved.options
    assert resolve(method, {}).options == resolved.options


def test_resolve_builds_options_from_a_mapping_with_lists_as_tuples():
    resolved = resolve("ot", {"mode": "activations", "weights": [1, 3]})
    assert resolved.options == OTOptions(mode="activations", weights=(1, 3))
    assert resolve("transplant", {"reference": 1}).reference == 1 and resolve("intra").reference == 0


def test_an_unknown_method_is_refused_listing_the_known_ones():
    with pytest.raises(ConfigError, match=r"unknown fusion method 'otf'; expected one of average, ensemble, ot, "):
        resolve("otf")


def test_an_unknown_option_is_refused_listing_the_methods_options():
    with pytest.raises(ConfigError, match=r"prune has no option colour, mode; its options are importance, sparsity$"):
        resolve("prune", {"mode": "weights", "colour": "red"})


def test_options_of_another_class_are_refused():
    with pytest.raises(ConfigError, match=r"average takes its options as a FusionOptions .*, got a OTOptions"):
        resolve("average", OTOptions())


@pytest.mark.parametrize(
    ("method", "count", "wanted"),
    [("ot", 1, "at least 2 models"), ("intra", 2, "exactly 1 model"), ("cla", 3, "exactly 2 models")],
)
def test_a_wrong_number_of_models_is_refused_by_the_method_s_entry(method, count, wanted):
    message = f"{method} takes {wanted}, got {count}"
    with pytest.raises(ConfigError, match=message):
        resolve(method).spec.check_models(count)
    with pytest.raises(ConfigError, match=message):
        fuse([randomised(SMALL["mlp-bias"], seed=s) for s in range(count)], method, inputs=X)


def test_a_resolved_method_takes_no_more_options():
    models = [randomised(SMALL["mlp-bias"], seed=s) for s in range(2)]
    assert fuse(models, resolve("average", {"weights": (1, 0)}), inputs=X).report.options["weights"] == (1, 0)
    with pytest.raises(ConfigError, match="give them to resolve"):
        fuse(models, resolve("average"), inputs=X, weights=(1, 0))


@pytest.mark.parametrize(("kind", "name"), LITERAL_FIELDS, ids=[f"{k.__name__}.{n}" for k, n in LITERAL_FIELDS])
def test_a_choice_is_refused_with_the_values_of_its_literal_hint(kind, name):
    allowed = typing.get_args(typing.get_type_hints(kind)[name])
    assert choices(kind, name) == allowed
    with pytest.raises(ConfigError, match=rf"^{name} must be one of {', '.join(allowed)}, got 'bogus'$") as refused:
        kind(**{name: "bogus"})
    assert [problem.field for problem in refused.value.problems] == [name]


def test_every_problem_of_an_options_class_is_refused_at_once():
    with pytest.raises(ConfigError) as refused:
        OTOptions(mode="gradients", metric="manhattan", reg=0, weights=(1, -1))
    assert [problem.field for problem in refused.value.problems] == ["metric", "mode", "reg", "weights"]


def test_shared_options_are_declared_once():
    averaging = {f.name for f in dataclasses.fields(AverageOptions)}
    transport = {f.name for f in dataclasses.fields(TransportOptions)}
    assert not set(vars(CLAOptions)["__annotations__"]) & averaging, "CLAOptions inherits the averaging options"
    assert averaging | transport <= {f.name for f in dataclasses.fields(CLAOptions)}
    assert averaging <= {f.name for f in dataclasses.fields(FusionOptions)}
    with pytest.raises(ConfigError, match="need 2 finite non-negative weights"):
        CLAOptions(weights=(1.0, 1.0, 1.0))


def test_fuse_s_help_lists_every_method_with_its_options_and_details_classes():
    for name, spec in REGISTRY.items():
        assert f"``{name}`` (options :class:`{spec.options.__name__}`, details :class:`{spec.details.__name__}`)" in (
            fuse.__doc__ or ""
        )


def test_details_are_the_method_s_record_and_read_back_from_stored_json():
    models = [randomised(SMALL["mlp-bias"], seed=s) for s in range(2)]
    report = fuse(models, "transplant", inputs=X).report
    assert isinstance(report.details, TransplantDetails)
    stored = report.to_dict()
    assert set(stored["details"]) == {"kept_from", "groups", "variant", "shared"}
    assert FusionReport.from_dict(stored) == report
    del stored["details"]["shared"]  # reports stored before shared groups were recorded
    assert FusionReport.from_dict(stored).details.shared == []
    assert type(fuse(models, "ot", inputs=X).report.details) is Details


def test_a_report_of_a_method_no_longer_registered_reads_back_without_details():
    stored = {"method": "retired", "options": {}, "seconds": 1.0, "details": {"anything": [1, 2]}}
    assert FusionReport.from_dict(stored).details == Details()
