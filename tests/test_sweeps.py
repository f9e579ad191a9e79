"""Sweeps (studies/sweeps): the sweep file and its jobs, one job run in-process, the whole sweep through submitit's
local executor (interrupted and resumed), the SLURM path under submitit's own mocked SLURM, the commands and the
Sweeps page."""

from __future__ import annotations

import functools
import json
import shlex
import time
import tracemalloc
from dataclasses import replace
from pathlib import Path

import pandas as pd
import pytest
from submitit.core import submission
from submitit.core.utils import FailedJobError
from submitit.slurm.test_slurm import mocked_slurm

from cli.main import main
from fusion.data import dataset_normalization
from fusion.errors import ArchitectureError, ConfigError, DatasetError, WorkspaceError
from fusion.models import build_model, default_spec
from fusion.workspace import Workspace
from studies.comparison import hessian_summary
from studies.pipeline import build_demo_ensemble, demo_members
from studies.sweeps.jobs import JobOutcome, SweepFolder, run_job, sweep_names
from studies.sweeps.launch import check_parents, run_sweep
from studies.sweeps.spec import EXAMPLE_SWEEP, load_sweep, option_grid, parse_sweep, sweep_from
from studies.sweeps.table import job_rows, read_sweep, summary_rows
from tests.app_helpers import messages, open_app, train_quick_models, wait_for_job


def test_a_sweep_file_expands_into_one_job_per_method_grid_point_and_seed() -> None:
    spec = parse_sweep(EXAMPLE_SWEEP + '[options.ot]\nmode = ["weights", "activations"]\nreg = 0.05\n')
    parents = spec.parent_jobs()
    assert [p.training_seed for p in parents] == [0, 1, 2, 3]
    jobs = spec.fusion_jobs()
    assert [(j.method, j.seed) for j in jobs] == [
        ("ot", 0),
        ("ot", 0),
        ("ot", 1),
        ("ot", 1),
        ("matching", 0),
        ("matching", 1),
        ("average", 0),
        ("average", 1),
    ]
    assert [j.options for j in jobs[:2]] == [
        {"mode": "weights", "reg": 0.05, "seed": 0},
        {"mode": "activations", "reg": 0.05, "seed": 0},
    ]
    assert jobs[2].parent_jobs == tuple(p.id for p in parents[2:])
    assert len({j.id for j in jobs}) == len(jobs)
    again = parse_sweep(EXAMPLE_SWEEP + '[options.ot]\nmode = ["weights", "activations"]\nreg = 0.05\n')
    assert [j.id for j in again.fusion_jobs()] == [j.id for j in jobs]
    tuned = parse_sweep(EXAMPLE_SWEEP + "[finetune]\nepochs = 1\n").fusion_jobs()
    assert not {j.id for j in tuned} & {j.id for j in jobs}
    assert {j.finetune.seed for j in tuned if j.finetune} == {0, 1}


def test_an_option_that_is_a_list_is_an_axis_only_as_a_list_of_lists() -> None:
    assert option_grid("ot", {"weights": [0.3, 0.7]}, 2) == [{"weights": [0.3, 0.7], "seed": 2}]
    assert [g["weights"] for g in option_grid("ot", {"weights": [[0.3, 0.7], [0.5, 0.5]]}, 2)] == [
        [0.3, 0.7],
        [0.5, 0.5],
    ]
    assert option_grid("average", {}, 2) == [{}]
    assert option_grid("ot", {"seed": 9}, 2) == [{"seed": 9}]


def test_parents_by_id_cross_every_seed_and_unseeded_jobs_appear_once() -> None:
    spec = sweep_from({"name": "ids", "methods": ["average", "ot"], "seeds": [0, 1], "parents": [["a", "b"]]})
    jobs = spec.fusion_jobs()
    assert [(j.method, j.seed, j.parents) for j in jobs] == [
        ("average", 0, ("a", "b")),
        ("ot", 0, ("a", "b")),
        ("ot", 1, ("a", "b")),
    ]
    assert spec.parent_jobs() == []
    with_hessian = sweep_from(
        {"name": "ids", "methods": ["ot"], "parents": [["a", "b"], ["b", "c"]], "hessian": {"samples": 50}}
    )
    assert [p.model for p in with_hessian.parent_jobs()] == ["a", "b", "c"]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('name = "x"\nmethods = ["ot"]\nparents = [["a", "b"]]\ncolour = 1', "no setting colour"),
        ('name = "x"\nmethods = ["nope"]\nparents = [["a", "b"]]', "unknown method(s) nope"),
        ('name = "Bad Name"\nmethods = ["ot"]\nparents = [["a", "b"]]', "a sweep name"),
        ('name = "x"\nmethods = ["ot"]\nparents = [["a", "a"]]', "distinct model ids"),
        ('name = "x"\nmethods = ["ot"]\nseeds = [1, 1]\nparents = [["a", "b"]]', "the seeds repeat"),
        ('name = "x"\nmethods = ["ot"]\nparents = [["a", "b"]]\n[options.ot]\nmood = "weights"', "no option mood"),
        ('name = "x"\nmethods = ["ot"]\nparents = [["a", "b"]]\n[options.average]\nrepair = true', "does not run"),
        ('name = "x"\nmethods = ["ot"]\n[parents]\narch = "mlp"\nseed = 3', "takes no seed"),
        ('name = "x"\nmethods = ["ot"]\n[parents]\narch = "mlp"\nepochs = 0', "epochs must be"),
        ('name = "x"\nmethods = ["ot"]\nparents = [["a", "b"]]\n[finetune]\nepochs = 1\nseed = 2', "no seed"),
        ('name = "x"\nmethods = ["ot"]\nparents = [["a", "b"]]\n[hessian]\nsample = 5', "[hessian] has no setting"),
        ('name = "x"\nmethods = ["ot"]\nparents = [["a", "b"]]\n[executor]\ncluster = "pbs"', "cluster must be"),
        ('name = "x"\nmethods = ["ot"\n', "not valid TOML"),
    ],
)
def test_a_bad_sweep_file_is_refused_by_name(text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[")):
        parse_sweep(text)


def test_a_json_sweep_file_reads_as_the_same_sweep(tmp_path: Path) -> None:
    toml = tmp_path / "sweep.toml"
    toml.write_text(EXAMPLE_SWEEP)
    spec = load_sweep(toml)
    as_json = tmp_path / "sweep.json"
    as_json.write_text(
        json.dumps(
            {
                "name": "demo-methods",
                "methods": ["ot", "matching", "average"],
                "seeds": [0, 1],
                "parents": {"arch": "mlp", "dataset": "digits", "models": 2, "epochs": 30, "batch_size": 64},
                "executor": {"cluster": "local", "parallel": 2},
            }
        )
    )
    assert load_sweep(as_json) == spec
    assert type(spec).from_dict(json.loads(json.dumps(spec.to_dict()))) == spec
    with pytest.raises(ConfigError, match="ends in .toml or .json"):
        load_sweep(tmp_path / "sweep.yaml")


def test_one_job_fuses_fine_tunes_and_stores_its_hessians_and_landscape(workspace: Workspace) -> None:
    parents = [r.id for r in train_quick_models(workspace, seeds=(0, 1))]
    spec = sweep_from(
        {
            "name": "one",
            "methods": ["ot"],
            "parents": [parents],
            "finetune": {"epochs": 1},
            "hessian": {"samples": 60, "batch_size": 60, "top_k": 2, "probes": 5, "steps": 8, "runs": 1},
            "landscape": {"resolution": 3, "samples": 60},
        }
    )
    SweepFolder(workspace.root, "one").save_spec(spec)
    [job] = spec.fusion_jobs()
    outcome = run_job(str(workspace.root), "one", job)
    assert outcome.status == "done" and outcome == SweepFolder(workspace.root, "one").outcome(job.id)
    fused, tuned = outcome.models["fused"], outcome.models["fine-tuned"]
    assert workspace.record(fused).provenance["method"] == "ot"
    assert workspace.record(tuned).parents == [fused]
    assert outcome.metrics["test_accuracy"] == workspace.record(fused).metrics["test_accuracy"]
    assert (outcome.metrics["top_eigenvalue"], outcome.metrics["hessian_trace"]) == hessian_summary(workspace, fused)
    assert outcome.metrics["finetuned_top_eigenvalue"] == hessian_summary(workspace, tuned)[0]
    assert {"barrier A-B", "barrier A-fused", "barrier B-fused", "barrier A-B aligned"} <= set(outcome.metrics)


def test_sweep_tables_give_accuracy_in_percent_and_fusion_seconds_without_startup(workspace, monkeypatch) -> None:
    parents = [r.id for r in train_quick_models(workspace, seeds=(0, 1))]
    imports = []

    def slow_first_import() -> None:  # a job process's first import of POT and lap
        time.sleep(0.5)
        imports.append("POT, lap")

    monkeypatch.setattr("fusion.registry.load_solvers", slow_first_import)
    spec = sweep_from({"name": "units", "methods": ["ot"], "parents": [parents]})
    SweepFolder(workspace.root, "units").save_spec(spec)
    run_job(str(workspace.root), "units", spec.fusion_jobs()[0])
    table = read_sweep(workspace.root, "units")
    (row,), (summary,) = job_rows(table), summary_rows(table)
    assert imports and row["fusion_seconds"] < 0.5 <= row["job_seconds"], "the import is start-up, not fusion"
    accuracy = workspace.record(row["fused"]).metrics["test_accuracy"]
    assert row["test_accuracy_pct"] == summary["test_accuracy_pct"] == pytest.approx(100 * accuracy)
    assert row["parent A accuracy (%)"] == pytest.approx(100 * workspace.record(parents[0]).metrics["test_accuracy"])
    assert not [name for r in (row, summary) for name in r if name.endswith("accuracy")], "a fraction left"


def test_a_failing_job_stores_its_error_and_raises(workspace: Workspace) -> None:
    spec = sweep_from({"name": "broken", "methods": ["average"], "parents": [["missing-a", "missing-b"]]})
    [job] = spec.fusion_jobs()
    with pytest.raises(Exception, match="missing-a"):
        run_job(str(workspace.root), "broken", job)
    outcome = SweepFolder(workspace.root, "broken").outcome(job.id)
    assert outcome is not None and outcome.status == "failed" and "missing-a" in outcome.error


class Interrupt(Exception):
    pass


@pytest.fixture(scope="module")
def swept(tmp_path_factory: pytest.TempPathFactory) -> tuple[Workspace, dict]:
    """The demo ensemble's MLPs, then the demo sweep through submitit's local executor: interrupted once one fusion
    job has finished (one job at a time), then resumed. Returns the workspace and what each call did."""
    workspace = Workspace(tmp_path_factory.mktemp("sweep") / "ws")
    build_demo_ensemble(workspace, demo_members(mlps=4, cnns=0))
    spec = parse_sweep(EXAMPLE_SWEEP)
    folder = SweepFolder(workspace.root, spec.name)
    fusion_ids = [j.id for j in spec.fusion_jobs()]

    def stop_after_first(done: int, total: int, message: str) -> None:
        if any(folder.done(i) for i in fusion_ids):
            raise Interrupt

    serial = replace(spec, executor=replace(spec.executor, parallel=1))
    with pytest.raises(Interrupt):
        run_sweep(workspace, serial, progress=stop_after_first)
    finished = {i: folder.outcome_path(i).read_bytes() for i in fusion_ids if folder.done(i)}
    unfinished = [i for i in fusion_ids if folder.outcome(i) is None]
    resumed = run_sweep(workspace, spec)
    return workspace, {"finished": finished, "unfinished": unfinished, "resumed": resumed, "spec": spec}


def test_the_demo_sweep_reuses_the_demo_parents_and_resumes_without_redoing_finished_jobs(swept) -> None:
    workspace, calls = swept
    spec, resumed = calls["spec"], calls["resumed"]
    folder = SweepFolder(workspace.root, spec.name)
    assert len(calls["finished"]) == 1, "the interrupt came after exactly one fusion job (one at a time)"
    assert len(calls["unfinished"]) == 5, "the interrupted job and those after it left no outcome"
    parents = [p.id for p in spec.parent_jobs()]
    assert set(resumed.skipped) == set(parents) | set(calls["finished"]), "the resume skipped what had finished"
    assert sorted(resumed.submitted) == sorted(calls["unfinished"]) and not resumed.failed
    for job_id, stored in calls["finished"].items():
        assert folder.outcome_path(job_id).read_bytes() == stored
    demo = {r.seed: r.id for r in workspace.records() if r.method == "train"}
    assert len(demo) == 4, "no parent was trained again: the sweep's parents are the demo's MLPs"
    assert {folder.outcome(p).models["model"] for p in parents} == set(demo.values())
    assert {folder.outcome(p).host for p in parents} == {"reused"}


def test_the_sweep_table_reads_every_job_back_from_the_workspace(swept) -> None:
    workspace, calls = swept
    table = read_sweep(workspace.root, calls["spec"].name)
    assert table.counts() == {"done": 10, "failed": 0, "pending": 0}
    rows = job_rows(table)
    assert [(r["method"], r["seed"]) for r in rows] == [(j.method, j.seed) for j in calls["spec"].fusion_jobs()]
    for row in rows:
        record = workspace.record(row["fused"])
        assert record.provenance["method"] == row["method"]
        assert row["test_accuracy_pct"] == pytest.approx(100 * record.metrics["test_accuracy"])
    by_seed = {r["seed"]: set(r["parents"].split()) for r in rows if r["method"] == "ot"}
    demo = {r.seed: r.id for r in workspace.records() if r.method == "train"}
    assert by_seed == {0: {demo[0], demo[1]}, 1: {demo[2], demo[3]}}
    summary = {r["method"]: r for r in summary_rows(table)}
    assert set(summary) == {"ot", "matching", "average"} and {r["seeds"] for r in summary.values()} == {2}
    ot = [r["test_accuracy_pct"] for r in rows if r["method"] == "ot"]
    assert summary["ot"]["test_accuracy_pct"] == pytest.approx(sum(ot) / 2)
    assert summary["ot"]["test_accuracy_pct sd"] == pytest.approx(abs(ot[0] - ot[1]) / 2**0.5)


def test_every_sweep_row_command_rebuilds_its_fused_model(swept, capsys) -> None:
    workspace, calls = swept
    for row in job_rows(read_sweep(workspace.root, calls["spec"].name)):
        words = shlex.split(row["command"])
        assert words[:3] == ["python", "-m", "fusion"]
        assert main([*words[3:], "--workspace", str(workspace.root), "--json", "--quiet"]) == 0, row["command"]
        models = json.loads(capsys.readouterr().out)["models"]
        assert [m["id"] for m in models] == [row["fused"]] and models[0]["reused"], row["command"]


def test_the_sweeps_command_lists_and_writes_the_table(swept, tmp_path: Path, capsys) -> None:
    workspace, calls = swept
    assert main(["sweeps", "--workspace", str(workspace.root), "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)["sweeps"]
    assert listed == [{"name": "demo-methods", "counts": {"done": 10, "failed": 0, "pending": 0}}]
    path = tmp_path / "jobs.csv"
    status = main(["sweeps", "demo-methods", "--csv", str(path), "--workspace", str(workspace.root), "--json"])
    output = json.loads(capsys.readouterr().out)
    assert status == 0 and output["csv_rows"] == 6
    assert pd.read_csv(path)["job"].tolist() == [r["job"] for r in output["jobs"]]
    assert main(["sweeps", "nothing", "--workspace", str(workspace.root), "--json"]) == 1
    assert "no sweep named 'nothing'" in json.loads(capsys.readouterr().out)["error"]["message"]


def test_the_sweep_command_resumes_a_finished_sweep_without_submitting(swept, tmp_path: Path, capsys) -> None:
    workspace, calls = swept
    file = tmp_path / "demo.toml"
    file.write_text(EXAMPLE_SWEEP)
    assert main(["sweep", str(file), "--workspace", str(workspace.root), "--json", "--quiet"]) == 0
    output = json.loads(capsys.readouterr().out)
    assert output["run"]["submitted"] == [] and len(output["run"]["skipped"]) == 10
    bad = tmp_path / "bad.toml"
    bad.write_text('name = "x"\nmethods = ["ot"]\n')
    assert main(["sweep", str(bad), "--workspace", str(workspace.root), "--json"]) == 1
    assert json.loads(capsys.readouterr().out)["error"] == {
        "type": "ConfigError",
        "message": "a sweep file needs parents",
    }


def test_on_slurm_each_stage_is_one_array_and_the_fusions_wait_for_the_parents(workspace: Workspace) -> None:
    slurm = (
        'cluster = "slurm"\npartition = "gpu"\ngpus_per_node = 1\n[executor.slurm]\naccount = "lab"\nlicenses = "x:1"'
    )
    text = EXAMPLE_SWEEP.replace("epochs = 30", "epochs = 1").replace('"ot", "matching", "average"', '"average"')
    spec = parse_sweep(text.replace('cluster = "local"', slurm))
    with mocked_slurm() as mock:
        run = run_sweep(workspace, spec, detach=True)
        assert run.detached and len(run.submitted) == 6 and len(run.pending) == 6
        folder = SweepFolder(workspace.root, spec.name)
        scripts = sorted(folder.logs.glob("*submission.sh"))
        texts = [s.read_text() for s in scripts]
        parents_array = next(t for t in texts if "--array=0-3%2" in t)
        fusion_array = next(t for t in texts if "--array=0-1%2" in t)
        for text in (parents_array, fusion_array):
            assert "#SBATCH --partition=gpu" in text and "#SBATCH --gpus-per-node=1" in text
            assert "#SBATCH --account=lab" in text and "#SBATCH --licenses=x:1" in text
        assert "#SBATCH --dependency=afterany:12" in fusion_array
        for job_id in [*(f"12_{k}" for k in range(4)), "13_0", "13_1"]:
            with mock.job_context(job_id):
                submission.process_job(folder.logs)
    table = read_sweep(workspace.root, spec.name)
    assert table.counts() == {"done": 6, "failed": 0, "pending": 0}
    assert {r["seed"] for r in job_rows(table)} == {0, 1}


def test_a_local_sweep_cannot_be_detached(workspace: Workspace) -> None:
    with pytest.raises(ConfigError, match="only a SLURM sweep"):
        run_sweep(workspace, parse_sweep(EXAMPLE_SWEEP), detach=True)


class InProcess:
    """A stand-in for submitit's executor that runs each job at once in this process, recording what it ran."""

    def __init__(self) -> None:
        self.ran: list[str] = []

    def update_parameters(self, **parameters: object) -> None:
        pass

    def submit(self, function, *args):
        self.ran.append(args[-1].id)
        try:
            function(*args)
            error = None
        except Exception as exc:
            error = exc
        return Handle(error)


class Handle:
    def __init__(self, error: Exception | None) -> None:
        self.error = error

    def done(self) -> bool:
        return True

    def exception(self) -> Exception | None:
        return self.error


def test_a_fusion_whose_parent_failed_fails_with_the_parents_error_without_running(workspace: Workspace) -> None:
    spec = parse_sweep(EXAMPLE_SWEEP.replace('arch = "mlp"', 'arch = "mlp"\nspec = { hidden = [8] }'))
    executor = InProcess()

    def failing(*args: object) -> None:
        raise DatasetError("no data")

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr("studies.sweeps.jobs.parent_job", failing)
        run = run_sweep(workspace, spec, executor_factory=lambda config, path: executor)
    parents = [p.id for p in spec.parent_jobs()]
    assert executor.ran == parents, "the fusions were not run"
    assert sorted(run.failed) == sorted([*parents, *(j.id for j in spec.fusion_jobs())])
    folder = SweepFolder(workspace.root, spec.name)
    assert all("parent job" in folder.outcome(j.id).error for j in spec.fusion_jobs())
    assert all("DatasetError: no data" in folder.outcome(j.id).error for j in spec.fusion_jobs())


def test_the_sweeps_page_shows_a_stored_sweep_and_runs_one(app_workspace) -> None:
    parents = [r.id for r in train_quick_models(app_workspace, seeds=(0, 1))]
    at = open_app("pages/sweeps.py")
    assert not at.exception
    assert any("No sweep is stored" in m for m in messages(at.info))
    at.text_area(key="sweeps.text").set_value('name = "x"\nmethods = ["ot"]\n')
    at.button(key="FormSubmitter:sweeps.form-Run or resume on this machine").click().run()
    assert messages(at.error) and "a sweep file needs parents" in messages(at.error)[0]
    assert at.text_area(key="sweeps.text").value == 'name = "x"\nmethods = ["ot"]\n', "the typed file is kept"
    text = f'name = "page"\nmethods = ["average"]\nparents = [["{parents[0]}", "{parents[1]}"]]\n'
    at.text_area(key="sweeps.text").set_value(text)
    at.button(key="FormSubmitter:sweeps.form-Run or resume on this machine").click().run()
    job = wait_for_job()
    assert job is not None and job.status == "done", job
    at.run()
    assert not at.exception and not at.error, messages(at.error)
    assert sweep_names(app_workspace.root) == ["page"]
    assert at.selectbox(key="sweeps.name").value == "page"
    assert [m.value for m in at.metric] == ["1", "0", "0"]
    jobs = at.dataframe[1].value
    assert jobs["method"].tolist() == ["average"] and jobs["state"].tolist() == ["done"]
    summary = at.dataframe[0].value
    assert "None" not in summary.astype(str).to_numpy() and "–" in summary.astype(str).to_numpy(), "one seed: no sd"
    assert len(at.get("plotly_chart")) == 1


def test_the_readme_sweep_file_parses_as_written(repo_root: Path) -> None:
    readme = (repo_root / "README.md").read_text()
    block = readme.split("```toml\n", 1)[1].split("```", 1)[0]
    spec = parse_sweep(block)
    assert spec.executor.cluster == "slurm" and spec.executor.slurm == {"account": "mylab"}
    assert spec.parents is not None and spec.parents.spec == {"bias": False} and spec.parents.train.augment
    assert len(option_grid("ot", spec.options["ot"], 0)) == 2


def test_a_detached_resume_runs_failed_parents_again_and_their_fusions_after_them(workspace: Workspace) -> None:
    """A parent that failed in an earlier run is submitted again; its old failure must not fail the fusions that the
    dependency makes wait for it."""
    text = EXAMPLE_SWEEP.replace("epochs = 30", "epochs = 1").replace('"ot", "matching", "average"', '"average"')
    spec = parse_sweep(text.replace('cluster = "local"', 'cluster = "slurm"'))
    folder = SweepFolder(workspace.root, spec.name)
    for parent in spec.parent_jobs():
        folder.save_outcome(JobOutcome(parent.id, "failed", error="OSError: disk full"))
    with mocked_slurm() as mock:
        run = run_sweep(workspace, spec, detach=True)
        assert not run.failed and len(run.submitted) == 6
        for job_id in [*(f"12_{k}" for k in range(4)), "13_0", "13_1"]:
            with mock.job_context(job_id):
                submission.process_job(folder.logs)
    assert read_sweep(workspace.root, spec.name).counts() == {"done": 6, "failed": 0, "pending": 0}


def values(count: int, value) -> str:
    return "[" + ", ".join(value(k) for k in range(count)) + "]"


HUGE_GRID = (
    'name = "huge"\nmethods = ["ot"]\nparents = [["a", "b"]]\n[options.ot]\n'
    f"reg = {values(64, lambda k: str(0.01 * (k + 1)))}\n"
    f"samples = {values(64, lambda k: str(100 + k))}\n"
    f"sweeps = {values(64, lambda k: str(1 + k))}\n"
    f"weights = {values(64, lambda k: f'[{k / 64}, {1 - k / 64}]')}\n"
)
"""One method on one pair with four 64-valued option lists: 64**4 = 16,777,216 grid points, hence fusion jobs."""


def test_sweep_over_the_job_limit_is_refused_with_its_count_before_expansion(tmp_path: Path, capsys) -> None:
    parse_sweep(EXAMPLE_SWEEP)  # the imports and the method registry, outside the measurement
    tracemalloc.start()
    started = time.perf_counter()
    try:
        with pytest.raises(ConfigError, match=r"expands into 16,777,216 jobs .* limit of 1,000") as refused:
            parse_sweep(HUGE_GRID)
        seconds, (_, peak) = time.perf_counter() - started, tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 2**20, f"refusing took {peak} bytes: the grid was expanded"
    assert seconds < 1.0
    assert "max_jobs = 16777216" in str(refused.value) and "--max-jobs 16777216" in str(refused.value)
    six = EXAMPLE_SWEEP  # 4 parent jobs (2 seeds x 2 models) and 6 fusion jobs (3 methods x 2 seeds)
    with pytest.raises(ConfigError, match=r"10 jobs \(4 parent, 6 fusion\), more than its limit of 9"):
        parse_sweep("max_jobs = 9\n" + six)
    assert parse_sweep("max_jobs = 10\n" + six).max_jobs == 10
    file = tmp_path / "small-limit.toml"
    file.write_text("max_jobs = 9\n" + six)
    assert load_sweep(file, max_jobs=10).max_jobs == 10, "the command line's limit replaces the file's"
    with pytest.raises(ConfigError, match="max_jobs must be a positive integer"):
        parse_sweep("max_jobs = 0\n" + six)
    huge = tmp_path / "huge.toml"
    huge.write_text(HUGE_GRID)
    assert main(["sweep", str(huge), "--max-jobs", "5000", "--json"]) == 1
    error = json.loads(capsys.readouterr().out)["error"]
    assert error["type"] == "ConfigError" and "16,777,216 jobs" in error["message"] and "5,000" in error["message"]


@pytest.mark.parametrize(
    "extra",
    [
        {},
        {"methods": ["average", "ot", "prune"], "options": {"ot": {"mode": ["weights", "activations"]}}},
        {"finetune": {"epochs": 1}, "hessian": {"samples": 50}},
        {"parents": [["a", "b"], ["b", "c"]], "hessian": {"samples": 50}},
        {"parents": {"arch": "mlp", "models": 3, "epochs": 1}, "methods": ["average", "prune"]},
    ],
)
def test_the_job_count_is_the_number_of_jobs_the_sweep_expands_into(extra: dict) -> None:
    spec = sweep_from(
        {"name": "count", "methods": ["average", "ot"], "seeds": [0, 1, 2], "parents": [["a", "b"]]} | extra
    )
    assert spec.job_counts() == (len(spec.parent_jobs()), len(spec.fusion_jobs()))


SLURM_SWEEP = EXAMPLE_SWEEP.replace('cluster = "local"', 'cluster = "slurm"')


def test_slurm_executor_without_srun_is_a_typed_refusal_before_anything_is_stored(
    workspace: Workspace, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    monkeypatch.setattr("shutil.which", lambda name: None)
    with pytest.raises(ConfigError, match=r'cluster = "slurm" needs .*srun.* cluster = "local"'):
        run_sweep(workspace, parse_sweep(SLURM_SWEEP))
    assert not (workspace.root / "sweeps").exists(), "nothing was stored"
    file = tmp_path / "slurm.toml"
    file.write_text(SLURM_SWEEP)
    assert main(["sweep", str(file), "--workspace", str(workspace.root), "--json"]) == 1
    error = json.loads(capsys.readouterr().out)["error"]
    assert error["type"] == "ConfigError" and "srun" in error["message"]


def test_sbatch_refusing_the_job_array_is_a_typed_refusal(workspace: Workspace, monkeypatch) -> None:
    def refusing(args: object) -> str:
        raise FailedJobError("sbatch: error: invalid partition specified: gpu")

    with mocked_slurm() as mock:
        monkeypatch.setattr(mock, "sbatch", refusing)
        with pytest.raises(ConfigError, match="sbatch did not take the job array .*invalid partition"):
            run_sweep(workspace, parse_sweep(SLURM_SWEEP), detach=True)


def untrained(workspace: Workspace, arch: str) -> str:
    """The id of an untrained digits network of ``arch`` saved in ``workspace`` (the checks read metadata only)."""
    spec = default_spec(arch, (1, 8, 8), 10)
    normalization = dataset_normalization("digits")
    return workspace.save(build_model(spec, 0), spec=spec, dataset="digits", normalization=normalization).id


def test_sweep_with_missing_parents_is_refused_before_any_job(workspace: Workspace) -> None:
    present = untrained(workspace, "mlp")
    spec = sweep_from({"name": "gone", "methods": ["ot"], "parents": [[present, "gone-a"], ["gone-b", present]]})
    executor = InProcess()
    with pytest.raises(WorkspaceError, match="parent\\(s\\) gone-a, gone-b not in the workspace") as refused:
        run_sweep(workspace, spec, executor_factory=lambda config, path: executor)
    assert present not in str(refused.value)
    assert executor.ran == [] and sweep_names(workspace.root) == [], "no job ran and nothing was stored"


def test_sweep_with_mixed_architectures_is_refused(workspace: Workspace) -> None:
    mlp, cnn = untrained(workspace, "mlp"), untrained(workspace, "cnn")
    spec = sweep_from({"name": "mixed", "methods": ["prune", "ot"], "parents": [[mlp, cnn]]})
    executor = InProcess()
    with pytest.raises(ArchitectureError, match=f"sweep mixed, parents {mlp}, {cnn}: mismatched .* ot needs"):
        run_sweep(workspace, spec, executor_factory=lambda config, path: executor)
    assert executor.ran == [] and sweep_names(workspace.root) == []
    check_parents(workspace, replace(spec, methods=("prune",)))  # a pruning method takes the first parent alone


@pytest.mark.parametrize(
    ("methods", "group", "message"),
    [
        (["cla"], ["a", "b", "c"], "cla fuses exactly 2 models, a parent group has 3"),
        (["ot"], ["a"], "ot fuses at least 2 models"),
    ],
)
def test_parent_groups_of_a_size_a_method_cannot_fuse_are_refused(workspace, methods, group, message) -> None:
    spec = sweep_from({"name": "sizes", "methods": methods, "parents": [group]})
    with pytest.raises(ConfigError, match=message):
        run_sweep(workspace, spec, executor_factory=lambda config, path: InProcess())
    assert sweep_names(workspace.root) == []


def test_sweep_command_exits_non_zero_when_no_job_succeeds(
    workspace: Workspace, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    def failing(*args: object) -> None:
        raise DatasetError("no data")

    monkeypatch.setattr("studies.sweeps.jobs.parent_job", failing)
    in_process = functools.partial(run_sweep, executor_factory=lambda config, path: InProcess())
    monkeypatch.setattr("cli.sweep_commands.run_sweep", in_process)
    file = tmp_path / "doomed.toml"
    file.write_text(EXAMPLE_SWEEP.replace('"ot", "matching", "average"', '"average"'))
    assert main(["sweep", str(file), "--workspace", str(workspace.root), "--json", "--quiet"]) == 1
    error = json.loads(capsys.readouterr().out)["error"]
    assert error["type"] == "SweepFailedError"
    assert "all 2 fusion job(s) failed" in error["message"] and "DatasetError: no data" in error["message"]
    assert read_sweep(workspace.root, "demo-methods").counts() == {"done": 0, "failed": 6, "pending": 0}
