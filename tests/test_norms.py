import torch

from analysis.norms import neuron_norms
from fusion.models import layer_widths
from fusion.registry import FusionReport, fuse
from tests.fusion_helpers import SMALL, randomised

X = torch.randn(16, 1, 8, 8, generator=torch.Generator().manual_seed(0))


def test_incoming_and_outgoing_norms_of_an_mlp_are_its_row_and_column_norms():
    model = randomised(SMALL["mlp-bias"], seed=0)
    first = neuron_norms(model, X)[0]
    weights_in, weights_out = model.layers[1].weight.detach().double(), model.layers[3].weight.detach().double()
    assert torch.allclose(torch.tensor(first.incoming, dtype=torch.float64), weights_in.norm(dim=1), atol=1e-6)
    assert torch.allclose(torch.tensor(first.outgoing, dtype=torch.float64), weights_out.norm(dim=0), atol=1e-6)


def test_flattened_channels_count_their_whole_spatial_block_as_outgoing():
    model = randomised(SMALL["cnn"], seed=0)
    last_conv = neuron_norms(model, X)[1]
    columns = model.classifier[1].weight.detach().double().reshape(-1, 12, 4)
    assert torch.allclose(
        torch.tensor(last_conv.outgoing, dtype=torch.float64), columns.pow(2).sum((0, 2)).sqrt(), atol=1e-6
    )


def test_transplant_survival_accounts_for_every_neuron_and_keeps_the_original_width():
    members = [randomised(SMALL["mlp-bias"], seed=s) for s in range(3)]
    result = fuse(members, "transplant", inputs=X)
    tables = FusionReport.from_dict(result.report.to_dict()).survival()
    widths = layer_widths(members[0])[:-1]
    assert [len(t.parent) for t in tables] == [3 * w for w in widths]
    assert [sum(t.kept) for t in tables] == widths
    assert all(sum(t.kept_per_parent().values()) == w for t, w in zip(tables, widths))
    kept_importance = [v for t in tables[:1] for v, k in zip(t.importance, t.kept) if k]
    dropped_importance = [v for t in tables[:1] for v, k in zip(t.importance, t.kept) if not k]
    assert min(kept_importance) >= max(dropped_importance)


def test_pruning_survival_marks_the_kept_half():
    result = fuse([randomised(SMALL["cnn"], seed=0)], "intra", inputs=X, sparsity=0.5)
    tables = FusionReport.from_dict(result.report.to_dict()).survival()
    assert all(sum(t.kept) == round(len(t.kept) / 2) for t in tables)


def test_survival_tables_and_stored_maps_keep_network_order_after_a_round_trip_through_stored_json(workspace):
    import json

    from fusion.data import dataset_normalization
    from studies.pipeline import map_tensors
    from studies.stored_maps import stored_maps

    members = [randomised(SMALL["cnn"], seed=s) for s in range(2)]
    report = fuse(members, "transplant", inputs=X).report.to_dict()
    network = [g["name"] for g in report["groups"]]
    assert network != sorted(network), "a CNN's groups (features.*, classifier.*) are not in name order"
    stored = json.loads(json.dumps(report, sort_keys=True))
    assert [t.group for t in FusionReport.from_dict(stored).survival()] == network
    result = fuse(members, "ot", inputs=X)
    spec = SMALL["cnn"]
    record = workspace.save(
        result.model,
        spec=spec,
        dataset="digits",
        normalization=dataset_normalization("digits"),
        provenance={"method": "ot", "parents": [], "report": result.report.to_dict()},
        attachments={"transport": map_tensors(result.transports)},
    )
    order = [m.group for m in stored_maps(workspace, record.id) if m.model == 1]
    assert order == [g for g in [g["name"] for g in result.report.to_dict()["groups"]] if g in order] != sorted(order)
