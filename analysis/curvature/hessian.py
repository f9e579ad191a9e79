"""The Hessian of the loss as a linear operator: ``H V`` for a block of vectors, never ``H`` itself.

The Hessian is that of the data-weighted mean loss over ``N`` examples split into batches ``B_b``:
``H = ∇²_θ L(θ)``, ``L(θ) = Σ_b (|B_b| / N) ℓ(f(x_b; θ), (x_b, y_b))``, with ``ℓ`` a batch-mean loss (cross-entropy by
default) and the model in eval mode (BatchNorm uses its running statistics). It is never formed: every algorithm
calls Hessian-vector products ``H V`` for a block of vectors ``V: (n, b)``, ``n`` the number of parameters analysed:
:class:`HessianOperator` is a :class:`~analysis.curvature.operator.LinearOperator`, so every estimator of
:mod:`analysis.curvature` takes it.

Hessian-vector products are double backward (Pearlmutter 1994): ``H v = ∇_θ (∇_θ ℓ_b · v)``, with each batch's
gradient ``∇_θ ℓ_b`` computed once with its graph (``create_graph``, through ``torch.func.functional_call``) and kept,
so a product is one backward pass through that graph (``cache_graph``; memory grows with the samples).
PyHessian keeps the graph only for a single batch and rebuilds forward and backward per product otherwise; it also
leaks it through ``backward(create_graph=True)`` into ``.grad``, which ``torch.autograd.grad`` avoids. Chosen by
measurement (``bench/bench_hessian.py``, 2 CPU threads, methods interleaved): 1.02x the time of one forward and
backward pass per vector on the digits CNN and 1.59x on ResNet-18 at 32x32, where rebuilding the graph per product took
1.87x and 2.80x and forward-over-reverse 5.63x and 3.65x. Batching vectors did not pay on this CPU, so ``block_size``
defaults to 1 (it may on a GPU).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from analysis import AnalysisError, NonFiniteLoss
from analysis.curvature.operator import check_block
from analysis.states import eval_mode
from fusion.attention_layouts import differentiable_twin
from fusion.device import default_device
from fusion.distributed import all_reduce_sum, shard
from fusion.errors import DatasetError

Loss = Callable[[torch.Tensor, tuple[torch.Tensor, torch.Tensor]], torch.Tensor]
"""``loss(outputs, (inputs, targets))``: a scalar, the mean over the batch."""


def cross_entropy_loss(outputs: torch.Tensor, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    return F.cross_entropy(outputs, batch[1])


@dataclass(frozen=True)
class ParameterSpace:
    """The analysed parameters in a fixed order; flat vectors ``(..., n)`` concatenate them flattened."""

    names: tuple[str, ...]
    shapes: tuple[tuple[int, ...], ...]

    @property
    def sizes(self) -> list[int]:
        return [math.prod(s) for s in self.shapes]

    @property
    def size(self) -> int:
        return sum(self.sizes)

    def flatten(self, tensors: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """``{name: (..., *shape)}`` to ``(..., n)``."""
        lead = tensors[self.names[0]].shape[: tensors[self.names[0]].dim() - len(self.shapes[0])]
        return torch.cat([tensors[name].reshape(*lead, -1) for name in self.names], dim=-1)

    def unflatten(self, flat: torch.Tensor) -> dict[str, torch.Tensor]:
        """``(..., n)`` to ``{name: (..., *shape)}`` (views)."""
        lead = flat.shape[:-1]
        return {
            name: part.reshape(*lead, *shape)
            for name, shape, part in zip(self.names, self.shapes, flat.split(self.sizes, dim=-1))
        }


def check_data(data: tuple[torch.Tensor, torch.Tensor]) -> None:
    """Refuse (:class:`DatasetError`) empty data and inputs and targets of different lengths."""
    inputs, targets = data
    if len(inputs) == 0:
        raise DatasetError("the Hessian needs data, got an empty dataset")
    if len(inputs) != len(targets):
        raise DatasetError(f"inputs and targets differ in length: {len(inputs)} != {len(targets)}")


class HessianOperator:
    """``V ↦ H V`` for ``V: (n, b)`` on ``device``, in float32: the Hessian of ``loss`` over every example of
    ``data = (inputs, targets)`` in batches of ``batch_size`` (``None``: one batch), model in eval mode;
    ``block_size`` vectors share one backward pass, and ``cache_graph`` keeps every batch's gradient graph for all
    products (see the module docstring).

    ``parameters`` restricts ``θ`` to some trainable parameters (by name; the others are held fixed), giving the
    diagonal block of the Hessian for one layer or group. ``products`` counts the vectors multiplied so far. Under
    ``torch.distributed`` (:mod:`fusion.distributed`) every rank is given the same data, multiplies its own shard and
    the products and losses are all-reduced: every rank holds ``H V`` of the whole data.

    Raises :class:`AnalysisError` for a model without trainable parameters or unknown names, :class:`DatasetError`
    for empty data and :class:`NonFiniteLoss` when the loss at ``θ`` is not finite.

    >>> model = nn.Linear(2, 2)
    >>> with torch.no_grad():
    ...     _ = model.weight.zero_(), model.bias.zero_()
    >>> data = (torch.zeros(4, 2), torch.zeros(4, dtype=torch.long))
    >>> operator = HessianOperator(model, data, parameters=["bias"], device=torch.device("cpu"))
    >>> operator.matmul(torch.eye(2)).tolist()  # softmax p = (1/2, 1/2): H = diag(p) - p pᵀ
    [[0.25, -0.25], [-0.25, 0.25]]
    """

    def __init__(
        self,
        model: nn.Module,
        data: tuple[torch.Tensor, torch.Tensor],
        loss: Loss = cross_entropy_loss,
        device: torch.device | None = None,
        parameters: Sequence[str] | None = None,
        batch_size: int | None = None,
        block_size: int = 1,
        cache_graph: bool = True,
    ) -> None:
        check_data(data)
        self.device = device or default_device()
        trainable = {name: p for name, p in model.named_parameters() if p.requires_grad}
        if not trainable:
            raise AnalysisError(f"{type(model).__name__} has no trainable parameters: its Hessian is empty")
        names = list(trainable) if parameters is None else list(parameters)
        unknown = [name for name in names if name not in trainable]
        if unknown or not names:
            raise AnalysisError(
                f"parameters must be names of trainable parameters ({', '.join(list(trainable)[:4])}...), "
                f"got {unknown or names}"
            )
        self.model = model
        self.twin, self.rename = differentiable_twin(model)
        self.loss = loss
        self.data = data
        self.block_size = block_size
        self.cache_graph = cache_graph
        self.space = ParameterSpace(tuple(names), tuple(tuple(trainable[n].shape) for n in names))
        self.params = {n: trainable[n].detach().to(self.device).requires_grad_() for n in names}
        self.fixed = {k: v.detach().to(self.device) for k, v in model.state_dict().items() if k not in self.params}
        inputs, targets = self.data
        local = shard(len(inputs))
        inputs, targets = inputs[local], targets[local]
        batch = batch_size or max(len(inputs), 1)
        self.batches = [
            (inputs[i : i + batch].to(self.device), targets[i : i + batch].to(self.device))
            for i in range(0, len(inputs), batch)
        ]
        self.graphs: dict[int, tuple[torch.Tensor, ...]] = {}
        self.products = 0
        self.loss_value()

    @property
    def size(self) -> int:
        return self.space.size

    @property
    def dtype(self) -> torch.dtype:
        return torch.float32

    def batch_loss(self, params: dict[str, torch.Tensor], x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.loss(functional_call(self.twin, self.rename({**params, **self.fixed}), (x,)), (x, y))

    @torch.no_grad()
    def loss_value(self) -> float:
        """``L(θ)``; raises :class:`NonFiniteLoss` when it is NaN or infinite."""
        with eval_mode(self.twin):
            local = sum(float(self.batch_loss(self.params, x, y)) * len(x) for x, y in self.batches)
            value = float(all_reduce_sum(torch.tensor([local], dtype=torch.float64))) / len(self.data[0])
        if not math.isfinite(value):
            raise NonFiniteLoss(f"the loss at the analysed parameters is {value}; the Hessian is undefined there")
        return value

    def gradient(self, index: int) -> tuple[torch.Tensor, ...]:
        """``∇_θ ℓ_b`` of batch ``index`` with its graph (``create_graph``), kept when ``cache_graph``."""
        if index in self.graphs:
            return self.graphs[index]
        x, y = self.batches[index]
        with torch.enable_grad(), eval_mode(self.twin):
            loss = self.batch_loss(self.params, x, y)
            gradient = torch.autograd.grad(loss, list(self.params.values()), create_graph=True, materialize_grads=True)
        if self.cache_graph:
            self.graphs[index] = gradient
        return gradient

    def matmul(self, vectors: torch.Tensor) -> torch.Tensor:
        """``H V = Σ_b (|B_b| / N) ∇_θ (∇_θ ℓ_b · v)`` for ``V: (n, k)``, ``block_size`` vectors per backward pass
        (``is_grads_batched``); returns ``(n, k)``."""
        check_block(self, vectors)
        vectors = vectors.T.to(self.device, torch.float32)
        result = torch.zeros(vectors.shape, device=self.device)
        leaves = list(self.params.values())
        block = self.block_size
        for index, (x, _) in enumerate(self.batches):
            gradient = self.gradient(index)
            for start in range(0, len(vectors), block):
                chunk = vectors[start : start + block]
                tangents = self.space.unflatten(chunk if len(chunk) > 1 else chunk[0])
                try:
                    products = torch.autograd.grad(
                        gradient,
                        leaves,
                        [tangents[n] for n in self.space.names],
                        retain_graph=True,
                        is_grads_batched=len(chunk) > 1,
                        materialize_grads=True,
                    )
                except RuntimeError as exc:
                    if "derivative for" not in str(exc):
                        raise
                    raise AnalysisError(
                        f"the model uses an operation without a second derivative in PyTorch ({exc}): its Hessian "
                        "cannot be multiplied"
                    ) from exc
                weight = len(x) / len(self.data[0])
                for part, product in zip(self.space.unflatten(result[start : start + block]).values(), products):
                    part.add_(product.reshape(part.shape), alpha=weight)
        all_reduce_sum(result)
        # One reduction instead of a boolean copy of every entry; a finite but overflowing sum is checked in full.
        if not math.isfinite(float(result.sum())) and not bool(torch.isfinite(result).all()):
            raise NonFiniteLoss(
                "a Hessian-vector product is NaN or infinite: the loss is not twice differentiable here"
            )
        self.products += len(vectors)
        return result.T
