"""The master tests of the alignment core: an aligned model computes its source's function, on every architecture."""

import dataclasses

import numpy as np
import pytest
import torch

from fusion.alignment import AlignmentError, AlignOptions, align, verify_alignment
from fusion.errors import ArchitectureError, ConfigError
from fusion.groups import neuron_groups
from fusion.models import build_model, default_spec
from fusion.surgery import apply_transports, permuted, with_state
from fusion.transport import Transport
from tests.fusion_helpers import SMALL, max_logit_difference, randomised

X = torch.randn(128, 1, 8, 8, generator=torch.Generator().manual_seed(0))
ARCHITECTURES = ["mlp-bias", "vgg11-bn", "resnet18-bn"]


@pytest.mark.parametrize("mode", ["weights", "activations"])
@pytest.mark.parametrize("name", ARCHITECTURES)
def test_aligned_model_computes_same_function(name, mode):
    source, reference = randomised(SMALL[name], seed=0), randomised(SMALL[name], seed=1)
    groups = neuron_groups(reference, X)
    alignment = align(source, reference, groups, AlignOptions(mode=mode), inputs=X)
    assert max_logit_difference(alignment.model, source, X) < 1e-4
    assert verify_alignment(source, alignment.model, groups, alignment.transports, X) < 1e-4
    assert all(t.permutation is not None for t in alignment.transports.values())


@pytest.mark.parametrize(
    "options",
    [AlignOptions(), AlignOptions(mode="activations"), AlignOptions(metric="sqeuclidean", features="both", sweeps=50)],
    ids=["ot-weights", "ot-activations", "weight-matching"],
)
@pytest.mark.parametrize("name", ARCHITECTURES)
def test_permuted_copy_aligns_back_to_the_original_weights(name, options):
    original = randomised(SMALL[name], seed=0)
    groups = neuron_groups(original, X)
    shuffled = permuted(original, groups, seed=7)
    assert max_logit_difference(shuffled, original, X) < 1e-4
    alignment = align(shuffled, original, groups, options, inputs=X)
    for key, value in original.state_dict().items():
        assert torch.allclose(alignment.state[key].to(value.dtype), value, atol=1e-6), key


def test_weight_matching_stops_at_a_fixed_point():
    a, b = randomised(SMALL["resnet18-bn"], seed=0), randomised(SMALL["resnet18-bn"], seed=1)
    groups = neuron_groups(a, X)
    alignment = align(a, b, groups, AlignOptions(metric="sqeuclidean", features="both", sweeps=100))
    assert 1 < alignment.sweeps < 100
    again = align(alignment.model, b, groups, AlignOptions(metric="sqeuclidean", features="both", sweeps=100))
    assert all((t.permutation == range(len(t.permutation))).all() for t in again.transports.values())


def test_a_group_missing_its_residual_member_is_caught_and_named():
    source, reference = randomised(SMALL["resnet18-bn"], seed=0), randomised(SMALL["resnet18-bn"], seed=1)
    groups = neuron_groups(reference, X)
    broken = [
        dataclasses.replace(g, producers=tuple(m for m in g.producers if not m.module.startswith("layer2.0.shortcut")))
        for g in groups
    ]
    alignment = align(source, reference, broken, AlignOptions())
    culprit = next(g.name for g in groups if "layer2.0.shortcut.0" in g.layers)
    with pytest.raises(AlignmentError, match=culprit.replace(".", r"\.")):
        verify_alignment(source, alignment.model, broken, alignment.transports, X)


def widened(model: torch.nn.Module, groups, copies: int = 2) -> torch.nn.Module:
    """Every hidden neuron duplicated ``copies`` times, outgoing weights split evenly between the copies: the same
    function with ``copies`` times the width."""
    transports = {}
    for g in groups:
        plan = np.kron(np.eye(g.size), np.ones((1, copies))) / (g.size * copies)  # (n, copies*n)
        transports[g.name] = Transport.from_plan(plan)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    return with_state(model, apply_transports(state, groups, transports)).eval()


def test_widening_by_duplication_preserves_the_function():
    original = randomised(SMALL["mlp-bias"], seed=0)
    groups = neuron_groups(original, X)
    wide = widened(original, groups)
    assert wide.layers[1].out_features == 64
    assert max_logit_difference(wide, original, X) < 1e-4


@pytest.mark.parametrize("mode", ["weights", "activations"])
def test_transport_to_a_narrower_reference_merges_duplicates_exactly(mode):
    """Unequal widths: the correction ``T diag(1/nu)`` / ``diag(1/mu) T`` merges each pair of copies back into one
    neuron without changing the function."""
    original = randomised(SMALL["mlp-bias"], seed=0)
    groups = neuron_groups(original, X)
    wide = widened(original, groups)
    alignment = align(wide, original, groups, AlignOptions(mode=mode), inputs=X)
    assert alignment.model.layers[1].out_features == 32
    assert max_logit_difference(alignment.model, original, X) < 1e-4


def test_otfusion_correction_is_wrong_for_unequal_widths():
    original = randomised(SMALL["mlp-bias"], seed=0)
    groups = neuron_groups(original, X)
    alignment = align(widened(original, groups), original, groups, AlignOptions(correction="reference"))
    assert max_logit_difference(alignment.model, original, X) > 1e-2


def test_models_with_different_parameter_names_are_refused():
    a = build_model(SMALL["mlp-bias"], seed=0)
    b = build_model(default_spec("cnn", (1, 8, 8), 10), seed=0)
    with pytest.raises(ArchitectureError, match="architecture"):
        align(a, b, neuron_groups(a, X))


def test_activation_alignment_without_inputs_is_refused():
    a = randomised(SMALL["mlp-bias"], seed=0)
    with pytest.raises(ConfigError, match="inputs"):
        align(a, a, neuron_groups(a, X), AlignOptions(mode="activations"))


@pytest.mark.parametrize(
    "field,value", [("mode", "gradients"), ("sweeps", 0), ("samples", 0), ("reg", -1.0), ("metric", "l1")]
)
def test_absurd_alignment_options_are_refused(field, value):
    with pytest.raises(ConfigError):
        AlignOptions(**{field: value})
