import pytest
import torch

from analysis.landscape import LandscapeConfig, linear_interpolation
from fusion.errors import ArchitectureError, ConfigError
from fusion.groups import neuron_groups
from fusion.models import build_model, default_spec
from fusion.registry import fuse
from fusion.repair import chain_ends, repair, statistics
from fusion.surgery import permuted
from fusion.train import TrainConfig, evaluate, train
from tests.fusion_helpers import SMALL, max_logit_difference, randomised

CPU = torch.device("cpu")
X = torch.randn(256, 1, 8, 8, generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("method", ["ot", "matching"])
@pytest.mark.parametrize("name", ["mlp-bias", "cnn", "vgg11-bn", "resnet18-bn"])
def test_repair_leaves_a_model_fused_with_its_permuted_copy_unchanged(name, method):
    model = randomised(SMALL[name], seed=0)
    shuffled = permuted(model, neuron_groups(model, X), seed=3)
    result = fuse([model, shuffled], method, inputs=X, recompute_bn=False, repair=True)
    assert max_logit_difference(result.model, model, X) < 1e-3
    assert any(note.startswith("REPAIR renormalised") for note in result.report.notes)


@pytest.mark.parametrize("name", ["mlp-bias", "cnn", "vgg11-bn", "resnet18-bn"])
def test_every_repaired_neuron_has_the_interpolated_parent_statistics(name):
    parents = [randomised(SMALL[name], seed=s) for s in (0, 1)]
    fused = fuse(parents, "average", inputs=X, recompute_bn=False).model
    groups = neuron_groups(fused, X[:2])
    names = chain_ends(fused, groups, X[:2])
    before = statistics(fused, names, X, torch.device("cpu"))
    repair(fused, parents, groups, X, weights=[0.25, 0.75])
    after = statistics(fused, names, X, torch.device("cpu"))
    measured = [statistics(p, names, X, torch.device("cpu")) for p in parents]
    for end in names:
        mean = 0.25 * measured[0][end].mean + 0.75 * measured[1][end].mean
        std = 0.25 * measured[0][end].std + 0.75 * measured[1][end].std
        torch.testing.assert_close(after[end].std, std, rtol=1e-3, atol=1e-4)
        torch.testing.assert_close(after[end].mean, mean, rtol=1e-3, atol=1e-4)
    assert any(not torch.allclose(before[end].std, after[end].std, rtol=1e-2) for end in names)


def test_a_layer_without_bias_is_only_rescaled_and_said_so():
    spec = default_spec("mlp", (1, 8, 8), 10, hidden=(16, 16), bias=False)
    parents = [build_model(spec, seed=s).eval() for s in (0, 1)]
    result = fuse(parents, "average", inputs=X, repair=True)
    assert "no bias to shift" in result.report.notes[-1]
    groups = neuron_groups(result.model, X[:2])
    names = chain_ends(result.model, groups, X[:2])
    after = statistics(result.model, names, X, torch.device("cpu"))
    measured = [statistics(p, names, X, torch.device("cpu")) for p in parents]
    for end in names:
        torch.testing.assert_close(
            after[end].std, (measured[0][end].std + measured[1][end].std) / 2, rtol=1e-3, atol=1e-4
        )


def test_repair_refuses_parents_not_in_the_fused_models_neuron_order():
    wide = build_model(default_spec("mlp", (1, 8, 8), 10, hidden=(48, 24)), seed=0)
    narrow = build_model(default_spec("mlp", (1, 8, 8), 10, hidden=(32, 16)), seed=1)
    fused = fuse([narrow, narrow], "average", inputs=X).model
    with pytest.raises(ArchitectureError, match="not aligned"):
        repair(fused, [narrow, wide], neuron_groups(fused, X[:2]), X)


def test_repair_is_refused_for_methods_that_do_not_average():
    members = [randomised(SMALL["cnn"], seed=s) for s in range(2)]
    with pytest.raises(ConfigError, match="repair applies to"):
        fuse(members, "ensemble", inputs=X, repair=True)
    with pytest.raises(ConfigError, match="training inputs"):
        fuse(members, "average", repair=True)


@pytest.fixture(scope="module")
def cnn_parents(digits):
    """Two digits CNNs without BatchNorm (16-32 channels), trained 8 epochs from seeds 0 and 1."""
    spec = default_spec("cnn", (1, 8, 8), 10)
    parents = []
    for seed in (0, 1):
        model = build_model(spec, seed=seed)
        train(model, digits, TrainConfig(epochs=8, lr=2e-3, batch_size=64, seed=seed))
        parents.append(model.eval())
    return parents


def test_repair_raises_the_accuracy_of_fused_digits_cnns(digits, cnn_parents):
    parents = cnn_parents
    for method in ("average", "ot"):
        plain = evaluate(fuse(parents, method, data=digits).model, digits.x_test, digits.y_test).accuracy
        repaired = evaluate(
            fuse(parents, method, data=digits, repair=True).model, digits.x_test, digits.y_test
        ).accuracy
        assert repaired > plain + 0.01, (method, plain, repaired)


def test_repair_along_the_aligned_interpolation_lowers_the_barrier_and_passes_through_the_repaired_fusion(
    digits, cnn_parents
):
    config = LandscapeConfig(resolution=5)
    fused = fuse(cnn_parents, "ot", data=digits)
    a, b = fused.aligned
    plain = linear_interpolation(a, b, digits, config, CPU)
    repaired = linear_interpolation(a, b, digits, config, CPU, repair=True)
    assert repaired.repaired and not plain.repaired
    assert repaired.test_barrier < 0.5 * plain.test_barrier, (plain.test_barrier, repaired.test_barrier)
    for end in (0, -1):
        assert repaired.metrics.test_loss[end] == pytest.approx(plain.metrics.test_loss[end], rel=1e-4)
    midpoint = fuse(cnn_parents, "ot", data=digits, repair=True).model
    assert repaired.metrics.test_loss[2] == pytest.approx(
        evaluate(midpoint, digits.x_test, digits.y_test).loss, rel=1e-3
    )
    assert plain.metrics.test_loss[2] == pytest.approx(
        evaluate(fused.model, digits.x_test, digits.y_test).loss, rel=1e-4
    )


def test_repair_along_the_line_to_an_aligned_permuted_copy_changes_nothing(digits, cnn_parents):
    model = cnn_parents[0]
    groups = neuron_groups(model, digits.x_train[:2])
    a, b = fuse([model, permuted(model, groups, seed=3)], "matching", data=digits).aligned
    config = LandscapeConfig(resolution=3, samples=300)
    plain = linear_interpolation(a, b, digits, config, CPU)
    repaired = linear_interpolation(a, b, digits, config, CPU, repair=True)
    assert abs(plain.test_barrier) < 1e-4 and abs(repaired.test_barrier) < 1e-4
    assert repaired.metrics.test_loss == pytest.approx(plain.metrics.test_loss, rel=1e-4)
