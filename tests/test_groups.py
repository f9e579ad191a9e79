import pytest
import torch
from torch import nn

from fusion.groups import UnsupportedArchitecture, groups_by_module, neuron_groups
from fusion.models import build_model, default_spec
from tests.fusion_helpers import SMALL

X = torch.randn(2, 1, 8, 8)


def test_mlp_has_one_group_per_hidden_layer_with_its_width():
    model = build_model(SMALL["mlp-bias"], seed=0)
    groups = neuron_groups(model, X)
    assert [g.size for g in groups] == [32, 16]
    assert [m.key for m in groups[0].producers] == ["layers.1.weight", "layers.1.bias"]
    assert [(m.key, m.dim) for m in groups[0].consumers] == [("layers.3.weight", 1)]


def test_flatten_gives_each_channel_its_spatial_block_of_linear_columns():
    model = build_model(SMALL["cnn"], seed=0)
    groups = neuron_groups(model, X)
    last_conv = next(g for g in groups if g.name == "features.3")
    (consumer,) = last_conv.consumers
    assert consumer.key == "classifier.1.weight"
    assert consumer.repeat == 2 * 2  # 8x8 input, two 2x2 max-pools


def test_output_logits_and_network_input_belong_to_no_group():
    model = build_model(SMALL["vgg11-bn"], seed=0)
    groups = neuron_groups(model, X)
    producers = {m.module for g in groups for m in g.producers}
    consumers = {m.module for g in groups for m in g.consumers}
    assert "classifier" not in producers
    assert "features.0" not in consumers


def test_residual_adds_tie_stem_and_block_outputs_into_one_group():
    model = build_model(SMALL["resnet18-bn"], seed=0)
    groups = neuron_groups(model, X)
    stem = groups[0]
    assert stem.name == "conv1"
    assert {"conv1", "layer1.0.conv2", "layer1.1.conv2"} == set(stem.layers)
    assert {"bn1", "layer1.0.bn2", "layer1.1.bn2"} <= {m.module for m in stem.producers}
    stage2 = next(g for g in groups if "layer2.0.shortcut.0" in g.layers)
    assert {"layer2.0.conv2", "layer2.1.conv2", "layer2.0.shortcut.0"} <= set(stage2.layers)
    assert "layer2.0.shortcut.1" in {m.module for m in stage2.producers}
    # stem, 8 block-internal groups, one group per later stage
    assert len(groups) == 1 + 8 + 3


@pytest.mark.parametrize("name", SMALL)
def test_every_parameter_slice_belongs_to_exactly_one_group(name):
    model = build_model(SMALL[name], seed=0)
    groups = neuron_groups(model, X)
    producer_keys = [m.key for g in groups for m in g.producers]
    assert len(producer_keys) == len(set(producer_keys))
    output_layer = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)][-1]
    for key, _tensor in model.state_dict().items():
        if key.endswith("num_batches_tracked") or key.startswith(output_layer + "."):
            continue
        assert key in producer_keys, f"{key} has no group"
    writes, reads = groups_by_module(groups)
    for group in groups:
        for member in group.producers:
            assert model.state_dict()[member.key].shape[0] == group.size * member.repeat


def test_a_grouped_convolution_reading_the_network_input_is_refused_with_a_clear_error():
    """Its convolution groups read fixed blocks of the input, so they could not move (tests/test_grouped_conv.py covers
    the grouped convolutions that are supported)."""
    model = nn.Sequential(nn.Conv2d(2, 4, 3, groups=2), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 10))
    with pytest.raises(UnsupportedArchitecture, match="0: a grouped convolution that reads the network's input"):
        neuron_groups(model, torch.randn(2, 2, 8, 8))


def test_groups_come_in_execution_order():
    model = build_model(default_spec("vgg11", (1, 8, 8), 10, width=0.125), seed=0)
    names = [g.name for g in neuron_groups(model, X)]
    indices = [int(n.split(".")[1]) for n in names]
    assert indices == sorted(indices)
