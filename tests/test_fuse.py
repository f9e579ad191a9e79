import json
from dataclasses import replace

import pytest
import torch

from cli.main import main
from fusion.batchnorm import recompute_batchnorm
from fusion.data import load_dataset
from fusion.errors import ArchitectureError, ConfigError, DatasetError
from fusion.groups import neuron_groups
from fusion.methods.base import parents_mismatch
from fusion.models import build_model, default_spec
from fusion.registry import REGISTRY, fuse
from fusion.surgery import permuted
from fusion.train import TrainConfig, evaluate, train
from fusion.transport import TransportError
from studies.pipeline import check_compatible, finetune_and_save, fuse_and_save, train_and_save
from tests.fusion_helpers import SMALL, max_logit_difference, randomised

X = torch.randn(64, 1, 8, 8, generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("method,options", [("ot", {}), ("ot", {"mode": "activations"}), ("matching", {})])
@pytest.mark.parametrize("name", ["mlp-bias", "vgg11-bn", "resnet18-bn"])
def test_fusing_a_model_with_its_permuted_copy_recovers_its_function(name, method, options):
    model = randomised(SMALL[name], seed=0)
    shuffled = permuted(model, neuron_groups(model, X), seed=3)
    result = fuse([model, shuffled], method, inputs=X, recompute_bn=False, **options)
    assert max_logit_difference(result.model, model, X) < 1e-4
    assert all(error is None or error < 1e-4 for error in result.report.verified)


def storages(*tensors: torch.Tensor) -> dict[int, int]:
    return {t.untyped_storage().data_ptr(): t.untyped_storage().nbytes() for t in tensors}


def test_an_ot_result_holds_one_network_and_builds_the_aligned_parents_only_when_asked():
    """The memory regression (issue 16): the fused network is built from a streamed average, so a result holds its
    own weights and its maps, not an aligned copy of each parent; an aligned parent is built on first use, and then
    computes its source's function."""
    model = randomised(SMALL["vgg11-bn"], seed=0)
    shuffled = permuted(model, neuron_groups(model, X), seed=3)
    result = fuse([model, shuffled], "ot", inputs=X, recompute_bn=False)
    inputs = storages(*model.state_dict().values(), *shuffled.state_dict().values())
    fused = storages(*result.model.state_dict().values())
    assert not set(fused) & set(inputs), "the fused network shares no tensor with its parents"
    assert result.aligned.built == {}, "no aligned parent was built"
    assert all(
        not {"barycentres", "consumer"} & set(vars(t)) for maps in result.transports if maps for t in maps.values()
    )
    assert result.aligned[0] is model
    assert max_logit_difference(result.aligned[1], shuffled, X) < 1e-4
    assert result.aligned[1] is result.aligned[1]


def test_vanilla_average_of_a_permuted_copy_breaks_the_function():
    model = randomised(SMALL["mlp-bias"], seed=0)
    shuffled = permuted(model, neuron_groups(model, X), seed=3)
    result = fuse([model, shuffled], "average", inputs=X)
    assert max_logit_difference(result.model, model, X) > 1e-2


def test_ensemble_predicts_the_mean_of_its_members_logits():
    members = [randomised(SMALL["cnn"], seed=s) for s in range(3)]
    result = fuse(members, "ensemble", inputs=X)
    with torch.no_grad():
        expected = torch.stack([m(X) for m in members]).mean(0)
        assert torch.allclose(result.model(X), expected, atol=1e-6)


@pytest.mark.parametrize("method", list(REGISTRY))
def test_fusion_leaves_its_input_models_untouched(method: str):
    """A comparison hands the same loaded parents to every method (fusion.workspace.LoadOnce)."""
    specs = [SMALL["resnet18-bn"]] * 2
    if method == "cla":
        specs = [default_spec("mlp", (1, 8, 8), 10, hidden=hidden, batch_norm=True) for hidden in [(16,), (16, 8)]]
    models = [randomised(spec, seed=s) for s, spec in enumerate(specs)]
    models = models[: REGISTRY[method].max_models or 2]
    before = [{k: v.clone() for k, v in m.state_dict().items()} for m in models]
    modes = [[m.training for m in model.modules()] for model in models]
    fuse(models, method, inputs=X)
    for model, state, mode in zip(models, before, modes):
        for key, value in model.state_dict().items():
            assert torch.equal(value, state[key]), key
        assert [m.training for m in model.modules()] == mode


def test_unequal_widths_fuse_into_the_reference_width():
    wide = build_model(default_spec("mlp", (1, 8, 8), 10, hidden=(48, 24)), seed=0)
    narrow = build_model(default_spec("mlp", (1, 8, 8), 10, hidden=(32, 16)), seed=1)
    result = fuse([wide, narrow], "ot", inputs=X, reference=1)
    assert [m.out_features for m in result.model.layers if isinstance(m, torch.nn.Linear)] == [32, 16, 10]
    assert result.report.groups[0].widths == [48, 32]
    assert torch.isfinite(result.model(X)).all()


def test_batchnorm_statistics_are_recomputed_as_an_exact_average():
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 5), torch.nn.BatchNorm1d(5))
    recompute_batchnorm(model, X, batch_size=16)
    with torch.no_grad():
        pre = model[1](model[0](X))
    assert torch.allclose(model[2].running_mean, pre.mean(0), atol=1e-5)
    assert model[2].momentum == 0.1
    assert not model.training


@pytest.fixture(scope="module")
def digits_parents():
    """Three digits MLPs and three CNNs trained from different seeds (about 4 s on 2 cores)."""
    data = load_dataset("digits")
    parents = {}
    for arch, config in [("mlp", TrainConfig(epochs=30, lr=1e-3)), ("cnn", TrainConfig(epochs=20, lr=2e-3))]:
        models = []
        for seed in range(3):
            model = build_model(default_spec(arch, (1, 8, 8), 10), seed=seed)
            train(model, data, TrainConfig(**{**config.to_dict(), "seed": seed}), device=torch.device("cpu"))
            models.append(model.eval())
        parents[arch] = models
    return data, parents


@pytest.mark.parametrize("k", [2, 3])
@pytest.mark.parametrize("arch", ["mlp", "cnn"])
def test_ot_fusion_is_far_above_vanilla_averaging_on_digits(digits_parents, arch, k):
    data, parents = digits_parents
    models = parents[arch][:k]
    accuracy = {
        method: evaluate(fuse(models, method, data=data).model, *data.split("test")).accuracy
        for method in ("average", "ot")
    }
    assert accuracy["ot"] >= accuracy["average"] + 0.03
    assert accuracy["ot"] >= 0.75


def test_mismatched_architectures_are_refused():
    a = build_model(default_spec("mlp", (1, 8, 8), 10, hidden=(32, 16)), seed=0)
    b = build_model(default_spec("mlp", (1, 8, 8), 10, hidden=(48, 16)), seed=0)
    with pytest.raises(ArchitectureError, match="identical architectures"):
        fuse([a, b], "average", inputs=X)
    c = build_model(default_spec("cnn", (1, 8, 8), 10), seed=0)
    with pytest.raises(ArchitectureError):
        fuse([a, c], "ot", inputs=X)


@pytest.mark.parametrize(
    "models,method,options,error",
    [
        (1, "ot", {}, ConfigError),
        (2, "magic", {}, ConfigError),
        (2, "ot", {"stepsize": 3}, ConfigError),
        (2, "average", {"mode": "activations"}, ConfigError),
        (2, "ot", {"reference": 5}, ConfigError),
        (2, "ot", {"weights": (1.0, -1.0)}, ConfigError),
    ],
)
def test_absurd_fusion_requests_are_refused(models, method, options, error):
    candidates = [randomised(SMALL["mlp-bias"], seed=s) for s in range(models)]
    with pytest.raises(error):
        fuse(candidates, method, inputs=X, **options)


def test_nan_weights_are_refused_by_the_transport():
    a, b = randomised(SMALL["mlp-bias"], seed=0), randomised(SMALL["mlp-bias"], seed=1)
    with torch.no_grad():
        a.layers[1].weight[0, 0] = float("nan")
    with pytest.raises(TransportError, match="NaN"):
        fuse([a, b], "ot", inputs=X)


def test_empty_inputs_are_refused():
    a, b = randomised(SMALL["mlp-bias"], seed=0), randomised(SMALL["mlp-bias"], seed=1)
    with pytest.raises(DatasetError):
        fuse([a, b], "ot", inputs=X[:0])


def test_fuse_and_save_records_provenance_and_transport_maps(workspace):
    ids = [
        train_and_save(
            workspace, default_spec("mlp", (1, 8, 8), 10, hidden=(16,)), "digits", TrainConfig(epochs=2, seed=s)
        ).record.id
        for s in range(2)
    ]
    run = fuse_and_save(workspace, ids, "ot", {"mode": "activations"})
    record = workspace.record(run.record.id)
    assert record.parents == ids and record.method == "ot"
    assert record.provenance["options"]["mode"] == "activations"
    maps = workspace.load_tensors(record.id, "transport")
    assert set(maps) == {"model1/layers.1/plan", "model1/layers.1/cost"}
    assert torch.allclose(maps["model1/layers.1/plan"].sum(), torch.tensor(1.0), atol=1e-5)
    assert maps["model1/layers.1/cost"].shape == (16, 16)
    assert record.metrics["test_accuracy"] == pytest.approx(run.metrics["test_accuracy"])


def test_the_same_fusion_twice_stores_one_model_and_says_the_second_was_reused(workspace, capsys):
    ids = [
        train_and_save(
            workspace, default_spec("mlp", (1, 8, 8), 10, hidden=(16,)), "digits", TrainConfig(epochs=1, seed=s)
        ).record.id
        for s in range(2)
    ]
    first = fuse_and_save(workspace, ids, "ot")
    second = fuse_and_save(workspace, ids, "ot", {"mode": "weights", "reference": 0})  # the defaults, spelled out
    assert (first.reused, second.reused) == (False, True)
    assert second.record == first.record and second.result is None
    assert second.report == first.report and second.metrics == first.metrics
    assert len(workspace.records()) == 3

    others = [fuse_and_save(workspace, ids, "ot", {"mode": "activations"}), fuse_and_save(workspace, ids[::-1], "ot")]
    assert not any(run.reused for run in others) and len(workspace.records()) == 5

    tuned = [finetune_and_save(workspace, first.record.id, TrainConfig(epochs=1)) for _ in range(2)]
    assert [t.reused for t in tuned] == [False, True] and tuned[0].record == tuned[1].record
    assert len(workspace.records()) == 6

    root = str(workspace.root)
    code = main(
        ["fuse", "--method", "ot", "--models", *ids, "--workspace", root, "--json", "--quiet", "--finetune-epochs", "1"]
    )
    output = json.loads(capsys.readouterr().out)
    assert code == 0 and [m["id"] for m in output["models"]] == [first.record.id, tuned[0].record.id]
    assert all(m["reused"] for m in output["models"]) and output["report"] == first.report.to_dict()
    assert main(["fuse", "--method", "ot", "--models", *ids, "--workspace", root, "--quiet"]) == 0
    assert "reused: stored by an earlier run with the same inputs" in capsys.readouterr().out
    assert len(workspace.records()) == 6


def test_the_prediction_ensemble_is_never_stored_so_never_reused(workspace):
    ids = [
        train_and_save(
            workspace, default_spec("mlp", (1, 8, 8), 10, hidden=(16,)), "digits", TrainConfig(epochs=1, seed=s)
        ).record.id
        for s in range(2)
    ]
    runs = [fuse_and_save(workspace, ids, "ensemble") for _ in range(2)]
    assert all(run.record is None and not run.reused and run.result is not None for run in runs)
    assert len(workspace.records()) == 2


def test_fusing_models_of_different_datasets_or_depths_saves_nothing(workspace):
    a = train_and_save(
        workspace, default_spec("mlp", (1, 8, 8), 10, hidden=(16,)), "digits", TrainConfig(epochs=1)
    ).record.id
    b = train_and_save(
        workspace, default_spec("mlp", (1, 8, 8), 10, hidden=(16, 8)), "digits", TrainConfig(epochs=1)
    ).record.id
    before = len(workspace.records())
    with pytest.raises(ArchitectureError, match="depth"):
        fuse_and_save(workspace, [a, b], "ot")
    assert len(workspace.records()) == before


def test_cli_fuse_prints_one_json_object_and_saves_the_model(workspace, capsys):
    ids = [
        train_and_save(
            workspace, default_spec("mlp", (1, 8, 8), 10, hidden=(16,)), "digits", TrainConfig(epochs=2, seed=s)
        ).record.id
        for s in range(2)
    ]
    code = main(
        [
            "fuse",
            "--method",
            "ot",
            "--models",
            *ids,
            "--workspace",
            str(workspace.root),
            "--json",
            "--quiet",
            "--solver",
            "sinkhorn",
            "--cost-normalization",
            "max",
        ]
    )
    output = json.loads(capsys.readouterr().out)
    assert code == 0
    assert output["models"][0]["id"] in {r.id for r in workspace.records()}
    assert output["report"]["options"]["solver"] == "sinkhorn"
    assert 0 < output["test_accuracy_pct"] <= 100


def test_cli_fuse_refuses_an_option_of_another_method(workspace, capsys):
    ids = [
        train_and_save(
            workspace, default_spec("mlp", (1, 8, 8), 10, hidden=(16,)), "digits", TrainConfig(epochs=1, seed=s)
        ).record.id
        for s in range(2)
    ]
    code = main(
        [
            "fuse",
            "--method",
            "average",
            "--models",
            *ids,
            "--workspace",
            str(workspace.root),
            "--json",
            "--mode",
            "activations",
        ]
    )
    assert code == 1
    assert json.loads(capsys.readouterr().out)["error"]["type"] == "ConfigError"


def test_sinkhorn_that_does_not_converge_is_refused_and_nothing_is_saved(workspace):
    ids = [
        train_and_save(
            workspace, default_spec("mlp", (1, 8, 8), 10, hidden=(width,)), "digits", TrainConfig(epochs=1, seed=s)
        ).record.id
        for s, width in enumerate((24, 16))
    ]
    before = len(workspace.records())
    with pytest.raises(TransportError, match="did not converge"):
        fuse_and_save(workspace, ids, "ot", {"solver": "sinkhorn", "reg": 1e-5, "reference": 1})
    assert len(workspace.records()) == before


def test_an_untraceable_model_is_refused_with_a_typed_error():
    from fusion.groups import UnsupportedArchitecture

    class Untraceable(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.layer = torch.nn.Linear(64, 10)

        def forward(self, x):
            return self.layer(x.numpy().reshape(len(x), -1))  # leaves torch: nothing to trace

    with pytest.raises(UnsupportedArchitecture, match="traced"):
        fuse([Untraceable(), Untraceable()], "ot", inputs=X)


@pytest.mark.parametrize(
    "method,count,extra",
    [("transplant", 3, ["--variant", "iterative"]), ("intra", 1, ["--sparsity", "0.25"]), ("prune", 1, [])],
)
def test_cli_runs_the_other_methods(workspace, capsys, method, count, extra):
    ids = [
        train_and_save(
            workspace, default_spec("mlp", (1, 8, 8), 10, hidden=(16,)), "digits", TrainConfig(epochs=1, seed=s)
        ).record.id
        for s in range(count)
    ]
    code = main(
        ["fuse", "--method", method, "--models", *ids, "--workspace", str(workspace.root), "--json", "--quiet", *extra]
    )
    output = json.loads(capsys.readouterr().out)
    assert code == 0, output
    saved = workspace.record(output["models"][0]["id"])
    assert saved.method == method and saved.parents == ids


def test_which_parents_a_method_accepts_is_its_registry_entrys_rule(workspace, monkeypatch):
    narrow, wide, deep = (default_spec("mlp", (1, 8, 8), 10, hidden=h) for h in ((16,), (24,), (16, 8)))
    assert {m: s.parents for m, s in REGISTRY.items() if s.parents != "same depth"} == {
        "average": "identical",
        "cla": "other depths",
    }
    assert parents_mismatch(narrow, narrow, "identical") is None
    assert "identical" in parents_mismatch(narrow, wide, "identical")
    assert parents_mismatch(narrow, wide, "same depth") is None and "depth" in parents_mismatch(
        narrow, deep, "same depth"
    )
    assert parents_mismatch(narrow, deep, "other depths") is None
    cnn = default_spec("cnn", (1, 8, 8), 10)
    assert "one family" in parents_mismatch(narrow, cnn, "other depths")

    ids = [train_and_save(workspace, spec, "digits", TrainConfig(epochs=1)).record.id for spec in (narrow, wide)]
    records = [workspace.record(i) for i in ids]
    with pytest.raises(ArchitectureError, match="average needs identical architectures"):
        check_compatible(records, "average")
    monkeypatch.setitem(REGISTRY, "average", replace(REGISTRY["average"], parents="same depth"))
    check_compatible(records, "average")
