"""Data-parallel analyses over torch.distributed: two gloo processes on the CPU compute what one process computes
(top-3 eigenvalues and the trace's probes to 1e-4 relative, an interpolation line to 1e-5)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch.multiprocessing as mp

from analysis.hessian import HessianReport
from analysis.hessian_config import HessianConfig
from fusion.distributed import shard
from fusion.models import default_spec
from fusion.train import TrainConfig
from fusion.workspace import Workspace
from studies.pipeline import train_and_save
from studies.runs import hessian_of
from tests.distributed_worker import analyses, run, statistics


def test_two_gloo_ranks_compute_the_single_process_analyses(tmp_path) -> None:
    single = analyses() | statistics()
    mp.spawn(run, args=(2, str(tmp_path / "rendezvous"), str(tmp_path)), nprocs=2, join=True)
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert ranks[0] == ranks[1], "every rank holds the all-reduced result"
    np.testing.assert_allclose(ranks[0]["eigenvalues"], single["eigenvalues"], rtol=1e-4)
    np.testing.assert_allclose(ranks[0]["trace"], single["trace"], rtol=1e-4)
    np.testing.assert_allclose(ranks[0]["line"], single["line"], rtol=1e-5)
    np.testing.assert_allclose(ranks[0]["batchnorm"], single["batchnorm"], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(ranks[0]["repair"], single["repair"], rtol=1e-5, atol=1e-6)
    # each group's cost sums float32 Gram products whose size is set by the largest group's: error relative to that
    scale = float(np.max(np.abs(single["costs"])))
    np.testing.assert_allclose(ranks[0]["costs"], single["costs"], rtol=1e-4, atol=1e-6 * scale)
    np.testing.assert_allclose(ranks[0]["fused"], single["fused"], rtol=1e-4, atol=1e-5)


def test_shards_cover_every_item_once(monkeypatch) -> None:
    assert shard(7) == slice(0, 7)
    monkeypatch.setattr("fusion.distributed.world_size", lambda: 3)
    slices = []
    for index in range(3):
        monkeypatch.setattr("fusion.distributed.rank", lambda index=index: index)
        slices.append(shard(7))
    assert [(s.start, s.stop) for s in slices] == [(0, 3), (3, 5), (5, 7)]


def test_torchrun_runs_the_hessian_command_on_two_ranks_and_rank_0_alone_writes(tmp_path, repo_root) -> None:
    workspace = Workspace(tmp_path / "ws")
    spec = default_spec("mlp", (1, 8, 8), 10, hidden=(16,))
    model_id = train_and_save(workspace, spec, "digits", TrainConfig(epochs=1, seed=0)).record.id
    options = ["--samples", "200", "--iterations", "40", "--probes", "10", "--runs", "1", "--steps", "10"]
    env = {**os.environ, "FUSIONLAB_WORKSPACE": str(workspace.root), "OMP_NUM_THREADS": "1", "FUSIONLAB_DEVICE": "cpu"}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
    result = subprocess.run(
        [*command, "-m", "fusion", "hessian", model_id, *options, "--json", "--quiet"],
        cwd=repo_root,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    (line,) = [line for line in result.stdout.splitlines() if line.startswith("{")]
    distributed = json.loads(line)
    single = HessianReport.from_dict(
        json.loads(json.dumps(hessian_of(Workspace(tmp_path / "ws"), model_id, config_of(options)).to_dict()))
    )
    np.testing.assert_allclose(distributed["top_eigenvalues"], single.top.eigenvalues, rtol=1e-4)
    assert distributed["trace"] == pytest.approx(single.trace.mean, rel=1e-4)


def config_of(options: list[str]) -> HessianConfig:
    values = dict(zip(options[::2], options[1::2]))
    return HessianConfig(**{k.removeprefix("--"): int(v) for k, v in values.items()})


def test_every_rank_times_a_step_as_often_as_the_others(monkeypatch) -> None:
    """A timed step may hold a collective (a sharded Hessian-vector product): ranks that stopped timing on their own
    clocks after different counts waited on each other until torchrun's test timed out. Under a process group the
    count is ``repeats``, whatever the clock says; alone, a quick step is timed until ``min_seconds`` pass."""
    from analysis import cost

    calls = []
    monkeypatch.setattr(cost, "world_size", lambda: 2)
    cost.time_step(lambda: calls.append(1), repeats=5, min_seconds=10.0, warm_up=False)
    assert len(calls) == 5
    calls.clear()
    monkeypatch.setattr(cost, "world_size", lambda: 1)
    cost.time_step(lambda: calls.append(1), repeats=5, min_seconds=0.05, max_repeats=1000, warm_up=False)
    assert len(calls) > 5
