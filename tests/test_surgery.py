"""fusion.surgery.with_state: a copy holding a new state, the source model untouched."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from fusion.errors import ArchitectureError
from fusion.surgery import with_state


def small() -> nn.Sequential:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.ReLU(), nn.Linear(4, 2))
    model[0].bias.requires_grad_(False)
    return model


def test_the_copy_holds_the_state_in_the_models_dtype_and_the_source_is_untouched() -> None:
    model = small()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    state = {k: torch.full_like(v, 2.0, dtype=torch.float64) for k, v in model.state_dict().items()}
    copy = with_state(model, state)
    for key, value in copy.state_dict().items():
        assert value.dtype == before[key].dtype
        assert torch.equal(value, state[key].to(value.dtype))
        assert torch.equal(model.state_dict()[key], before[key])
    assert isinstance(copy[0].weight, nn.Parameter) and copy[0].weight.requires_grad
    assert not copy[0].bias.requires_grad
    assert copy[0].weight.data_ptr() != model[0].weight.data_ptr()


def test_a_narrower_state_resizes_the_layers() -> None:
    model = small()
    state = dict(model.state_dict())
    for key in ("0.weight", "0.bias", "1.weight", "1.bias", "1.running_mean", "1.running_var"):
        state[key] = state[key][:3]
    state["3.weight"] = state["3.weight"][:, :3]
    copy = with_state(model, state)
    assert (copy[0].out_features, copy[1].num_features, copy[3].in_features) == (3, 3, 3)
    assert copy(torch.randn(5, 3)).shape == (5, 2)


def test_a_state_with_other_keys_is_refused() -> None:
    model = small()
    state = dict(model.state_dict())
    state.pop("3.bias")
    with pytest.raises(ArchitectureError, match="3.bias"):
        with_state(model, state)
