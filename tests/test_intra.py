import pytest
import torch

from fusion.errors import ConfigError
from fusion.groups import neuron_groups
from fusion.methods.intra import IntraOptions, fold_batchnorm, intra_fuse
from fusion.models import build_model, default_spec, layer_widths
from fusion.registry import fuse
from tests.fusion_helpers import SMALL, max_logit_difference, randomised
from tests.test_alignment import widened

X = torch.randn(32, 1, 8, 8, generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("name", ["mlp-bias", "cnn", "vgg11-bn", "resnet18-bn"])
def test_batchnorm_folding_preserves_the_function(name):
    model = randomised(SMALL[name], seed=0)
    folded = fold_batchnorm(model, X)
    assert max_logit_difference(folded, model, X) < 1e-5
    assert not any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in folded.modules())


@pytest.mark.parametrize("marginals", ["uniform", "importance"])
def test_a_network_widened_by_duplication_is_pruned_back_to_its_exact_function(marginals):
    original = randomised(SMALL["mlp-bias"], seed=0)
    wide = widened(original, neuron_groups(original, X))
    groups = neuron_groups(wide, X)
    first_copies = {g.name: list(range(0, g.size, 2)) for g in groups}
    importance = {g.name: torch.ones(g.size) for g in groups}
    pruned, _ = intra_fuse(wide, groups, first_copies, IntraOptions(marginals=marginals), importance)
    assert layer_widths(pruned) == layer_widths(original)
    assert max_logit_difference(pruned, original, X) < 1e-5


@pytest.mark.parametrize("method", ["intra", "prune"])
@pytest.mark.parametrize("name", ["cnn", "vgg11-bn", "resnet18-bn"])
def test_pruning_halves_every_group(name, method):
    model = randomised(SMALL[name], seed=0)
    result = fuse([model], method, inputs=X, sparsity=0.5)
    before = {g.name: g.size for g in neuron_groups(model, X)}
    after = {g.name: g.size for g in neuron_groups(result.model, X)}
    assert after == {name: round(size * 0.5) for name, size in before.items()}
    details = result.report.details.groups
    assert all(len(details[g].kept) == after[g] for g in after)


@pytest.mark.parametrize("sparsity", [0.0, 1.0, -0.2, 1.5])
def test_sparsity_outside_the_open_unit_interval_is_refused(sparsity):
    with pytest.raises(ConfigError, match="sparsity"):
        fuse([randomised(SMALL["cnn"], seed=0)], "intra", inputs=X, sparsity=sparsity)


def test_a_group_too_small_to_prune_is_refused():
    tiny = build_model(default_spec("mlp", (1, 8, 8), 10, hidden=(1,)), seed=0)
    with pytest.raises(ConfigError, match="too few"):
        fuse([tiny], "intra", inputs=X, sparsity=0.5)


def test_intra_fusion_takes_exactly_one_model():
    models = [randomised(SMALL["cnn"], seed=s) for s in range(2)]
    with pytest.raises(ConfigError, match="1"):
        fuse(models, "intra", inputs=X)


def test_merged_neurons_keep_the_mean_norm_of_the_rows_merged_into_them():
    """Averaging rows that point apart shrinks them; the default ``rows="rescaled"`` restores the plan-weighted mean
    norm, so merged neurons fire as strongly as the neurons they stand for."""
    model = fold_batchnorm(randomised(SMALL["mlp-bias"], seed=0), X)
    groups = neuron_groups(model, X)
    kept = {g.name: list(range(0, g.size, 2)) for g in groups}
    pruned, transports = intra_fuse(model, groups, kept, IntraOptions(marginals="uniform"))
    first = groups[0]
    rows = model.state_dict()[first.producers[0].key].double()
    plan = torch.from_numpy(transports[first.name].plan)
    expected = (plan / plan.sum(0)).T @ rows.norm(dim=1)
    merged = pruned.state_dict()[first.producers[0].key].double().norm(dim=1)
    assert torch.allclose(merged, expected, rtol=1e-4)


def test_rows_sum_applies_the_reference_map_to_both_sides():
    model = fold_batchnorm(randomised(SMALL["mlp-bias"], seed=0), X)
    groups = neuron_groups(model, X)
    kept = {g.name: list(range(0, g.size, 2)) for g in groups}
    _, transports = intra_fuse(model, groups, kept, IntraOptions(marginals="uniform", rows="sum"))
    for transport in transports.values():
        assert torch.equal(transport.producer, transport.consumer)
        assert torch.allclose(transport.producer.sum(0), torch.full((transport.shape[1],), 2.0), atol=1e-5)
