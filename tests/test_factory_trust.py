"""A user's ``python:MODULE:CALLABLE`` factory (issue 29): a workspace is data, so a stored model's factory runs only
when trusted on this machine; and whatever the factory or its module does (print, ``sys.exit``, fail at import), a
command under ``--json`` prints exactly one JSON object and fails cleanly."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cli.main import main
from fusion.data import dataset_normalization
from fusion.errors import ArchitectureError, UntrustedFactoryError
from fusion.models import ModelSpec, build_model
from fusion.sources import TRUSTED_FACTORIES_VARIABLE, trust_factory, trusted_here
from fusion.workspace import Workspace
from tests import factories

COUNTED = "tests.factories:counted_net"


@pytest.fixture(autouse=True)
def nothing_trusted(monkeypatch: pytest.MonkeyPatch):
    """No factory is listed or trusted in this process, and :func:`tests.factories.counted_net` has not run."""
    monkeypatch.delenv(TRUSTED_FACTORIES_VARIABLE, raising=False)
    trusted_here.clear()
    factories.built.clear()
    yield
    trusted_here.clear()


def cli(capsys: pytest.CaptureFixture, *argv: str) -> tuple[int, dict]:
    """Exit status and the one JSON object the command printed (``json.loads`` refuses anything around it)."""
    code = main([*argv, "--json"])
    return code, json.loads(capsys.readouterr().out)


@pytest.fixture
def copied_workspace(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Workspace, str]:
    """A workspace holding one model of :func:`tests.factories.counted_net`, as it arrives from another machine: saved
    where the factory was trusted, then opened where it is not (and before the factory ran here)."""
    spec = ModelSpec(f"python:{COUNTED}", (1, 8, 8), 10)
    with monkeypatch.context() as elsewhere:
        elsewhere.setenv(TRUSTED_FACTORIES_VARIABLE, COUNTED)
        workspace = Workspace(tmp_path / "ws")
        record = workspace.save(
            build_model(spec, seed=0), spec=spec, dataset="digits", normalization=dataset_normalization("digits")
        )
    factories.built.clear()
    return workspace, record.id


def test_stored_factory_model_is_not_built_without_trust(copied_workspace, capsys) -> None:
    workspace, model_id = copied_workspace
    with pytest.raises(UntrustedFactoryError, match=f"{COUNTED} is not trusted") as refused:
        workspace.load(model_id)
    assert isinstance(refused.value, ArchitectureError)
    code, output = cli(capsys, "evaluate", model_id, "--workspace", str(workspace.root))
    assert code == 1 and output["error"]["type"] == "UntrustedFactoryError"
    message = output["error"]["message"]
    assert COUNTED in message and TRUSTED_FACTORIES_VARIABLE in message and f"--trust-factory {COUNTED}" in message
    assert factories.built == [], "the stored model's factory ran"
    assert "test_accuracy" not in workspace.record(model_id).metrics


def test_stored_factory_model_is_listed_without_running_its_factory(copied_workspace, capsys) -> None:
    workspace, model_id = copied_workspace
    code, listed = cli(capsys, "list", "--workspace", str(workspace.root))
    assert code == 0, listed
    assert [m["id"] for m in listed["models"]] == [model_id] and listed["broken"] == []
    assert factories.built == []


def test_stored_factory_builds_when_listed_in_environment(copied_workspace, capsys, monkeypatch) -> None:
    workspace, model_id = copied_workspace
    monkeypatch.setenv(TRUSTED_FACTORIES_VARIABLE, f"other.module:net, {COUNTED}")
    code, evaluated = cli(capsys, "evaluate", model_id, "--workspace", str(workspace.root))
    assert code == 0, evaluated
    assert 0.0 <= evaluated["test_accuracy_pct"] <= 100.0
    assert factories.built == [(1, 8, 8)]


def test_stored_factory_builds_when_trusted_in_this_process(copied_workspace) -> None:
    workspace, model_id = copied_workspace
    trust_factory(COUNTED)
    model, record = workspace.load(model_id)
    assert record.spec.arch == f"python:{COUNTED}" and not model.training
    assert factories.built == [(1, 8, 8)]


def train(tmp_path: Path, factory: str) -> int:
    """``train --arch python:FACTORY --json`` for one epoch on digits, which names (and so trusts) the factory."""
    return main([
        "train", "--arch", f"python:{factory}", "--dataset", "digits", "--epochs", "1",
        "--workspace", str(tmp_path / "ws"), "--json",
    ])  # fmt: skip


def test_factory_printing_to_stdout_keeps_json_output_one_object(capsys, tmp_path) -> None:
    code = train(tmp_path, "tests.factories:printing")
    streams = capsys.readouterr()
    trained = json.loads(streams.out)
    assert code == 0, trained
    assert [m["id"] for m in trained["models"]] == [r.id for r in Workspace(tmp_path / "ws").records()]
    assert "building my network (1, 8, 8) 10" in streams.err


def test_factory_calling_sys_exit_is_a_clean_error(capsys, tmp_path) -> None:
    code = train(tmp_path, "tests.factories:exiting")
    output = json.loads(capsys.readouterr().out)
    assert code == 1 and output["error"]["type"] == "ArchitectureError"
    assert "python:tests.factories:exiting could not be built: it called sys.exit(3)" in output["error"]["message"]
    assert Workspace(tmp_path / "ws").records() == []


def test_factory_module_failing_at_import_is_a_clean_error(capsys, tmp_path) -> None:
    code = train(tmp_path, "tests.factory_broken_import:net")
    streams = capsys.readouterr()
    output = json.loads(streams.out)
    assert "loading my networks" in streams.err
    assert code == 1 and output["error"]["type"] == "ArchitectureError"
    assert output["error"]["message"] == (
        "the factory tests.factory_broken_import:net cannot be imported: "
        "RuntimeError: the weights folder is not mounted"
    )
    assert Workspace(tmp_path / "ws").records() == []


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("def net(input_shape, num_classes)\n", "SyntaxError: expected ':'"),
        ("print('setting up')\nraise SystemExit(2)\n", "it called sys.exit(2)"),
        ("1 / 0\n", "ZeroDivisionError: division by zero"),
    ],
    ids=["syntax-error", "sys-exit", "zero-division"],
)
def test_any_failure_while_importing_a_factory_module_names_the_factory_and_the_error(
    source: str, expected: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    (tmp_path / "user_nets_failing.py").write_text(source)
    monkeypatch.syspath_prepend(str(tmp_path))
    trust_factory("user_nets_failing:net")
    with pytest.raises(ArchitectureError, match="the factory user_nets_failing:net cannot be imported") as failure:
        build_model(ModelSpec("python:user_nets_failing:net", (1, 8, 8), 10))
    assert expected in str(failure.value)
    assert capsys.readouterr().out == ""


def test_a_factory_interrupted_by_the_user_is_not_turned_into_an_error(monkeypatch: pytest.MonkeyPatch) -> None:
    def interrupted(input_shape: tuple[int, int, int], num_classes: int) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(factories, "interrupted", interrupted, raising=False)
    trust_factory("tests.factories:interrupted")
    with pytest.raises(KeyboardInterrupt):
        build_model(ModelSpec("python:tests.factories:interrupted", (1, 8, 8), 10))
