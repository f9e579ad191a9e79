import pytest
import torch

from fusion.errors import ArchitectureError, ConfigError
from fusion.groups import neuron_groups
from fusion.methods.transplant import concatenate
from fusion.models import build_model, default_spec, layer_widths
from fusion.registry import fuse
from tests.fusion_helpers import SMALL, randomised

X = torch.randn(32, 1, 8, 8, generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("k", range(2, 8))
@pytest.mark.parametrize("name", ["mlp-bias", "vgg11-bn", "resnet18-bn"])
def test_concatenated_network_computes_the_mean_of_its_members_logits(name, k):
    members = [randomised(SMALL[name], seed=s) for s in range(k)]
    wide = concatenate(members, neuron_groups(members[0], X))
    with torch.no_grad():
        expected = torch.stack([m(X) for m in members]).mean(0)
        assert (wide(X) - expected).abs().max() < 1e-5
    assert layer_widths(wide)[0] == k * layer_widths(members[0])[0]


CASES = [(n, k, "all") for n in ("mlp-bias", "vgg11-bn", "resnet18-bn") for k in range(2, 8)] + [
    ("mlp-bias", k, v) for k in range(2, 8) for v in ("iterative", "hierarchical")
]


@pytest.mark.parametrize("name,k,variant", CASES)
def test_pruning_keeps_exactly_the_original_width_for_every_k(name, k, variant):
    members = [randomised(SMALL[name], seed=s) for s in range(k)]
    result = fuse(members, "transplant", inputs=X, variant=variant)
    assert layer_widths(result.model) == layer_widths(members[0])
    for key, value in members[0].state_dict().items():
        assert result.model.state_dict()[key].shape == value.shape, key


def test_the_largest_neurons_survive_and_their_parents_are_recorded():
    members = [randomised(SMALL["mlp-bias"], seed=s) for s in range(3)]
    with torch.no_grad():
        members[1].layers[1].weight.mul_(10.0)  # model 1's first-layer neurons dominate by magnitude
    result = fuse(members, "transplant", inputs=X, recompute_bn=False)
    first = result.report.details.kept_from["layers.1"]
    assert first.parent == [1] * 32
    assert first.neuron == list(range(32))
    record = result.report.details.groups["layers.1"]
    assert len(record.importance) == len(record.origin) == 96
    assert sorted(record.kept) == record.kept


def test_one_model_and_mixed_architectures_are_refused():
    a = build_model(SMALL["mlp-bias"], seed=0)
    with pytest.raises(ConfigError, match="2"):
        fuse([a], "transplant", inputs=X)
    b = build_model(default_spec("cnn", (1, 8, 8), 10), seed=0)
    with pytest.raises(ArchitectureError):
        fuse([a, b], "transplant", inputs=X)


def test_unknown_variant_is_refused():
    a, b = (build_model(SMALL["mlp-bias"], seed=s) for s in range(2))
    with pytest.raises(ConfigError, match="variant"):
        fuse([a, b], "transplant", inputs=X, variant="random")
