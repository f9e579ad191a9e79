"""The workspace never loses or hides a model: broken entries are named, files are checked against their sha256,
exports never clobber, and killed or concurrent writers leave only whole models (issue 10, items 1-4 and 8)."""

from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
from app_helpers import messages, open_app, train_quick_models
from safetensors.torch import save_file

from cli.main import main
from fusion.errors import CheckpointError, DamagedModelError, DamagedResultError, OutputFileError
from fusion.results import ResultRecord
from fusion.workspace import ModelRecord, Workspace, read_checkpoint

REPO_ROOT = Path(__file__).resolve().parents[1]


def break_entries(workspace: Workspace) -> dict[str, str]:
    """Add one entry of each kind of damage to ``models/``; returns entry name -> a word its reason must contain."""
    models = workspace.root / "models"
    for name, content in {
        "not-utf8": b'{"id": "not-utf8", "name": "\xff\xfe caf\xe9"}',
        "truncated-json": b'{"id": "truncated-json", "na',
        "invalid-record": json.dumps({"id": "invalid-record"}).encode(),
        "json-list": b"[1, 2, 3]",
    }.items():
        (models / name).mkdir()
        (models / name / "meta.json").write_bytes(content)
    (models / "no-meta").mkdir()
    return {
        "not-utf8": "UTF-8",
        "truncated-json": "JSON",
        "invalid-record": "metadata",
        "json-list": "object",
        "no-meta": "meta.json",
    }


def run_json(capsys: pytest.CaptureFixture, *args: str) -> tuple[int, dict]:
    status = main([*args, "--json", "--quiet"])
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err
    return status, json.loads(captured.out)


def weights_path(workspace: Workspace, record: ModelRecord) -> Path:
    return workspace.model_dir(record.id) / "model.safetensors"


def truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 100])


def flip_last_byte(path: Path) -> None:
    """An edit that keeps the size and a valid header: only the checksum can notice it."""
    data = bytearray(path.read_bytes())
    data[-1] ^= 0x01
    path.write_bytes(bytes(data))


def drop_checksums(workspace: Workspace, record: ModelRecord) -> None:
    """Make ``record`` look saved before checksums existed."""
    meta = workspace.model_dir(record.id) / "meta.json"
    payload = json.loads(meta.read_text())
    del payload["checksums"]
    meta.write_text(json.dumps(payload))


# --- 1. broken entries are named, never fatal, never hidden -------------------------------------------------------


def test_scan_names_every_broken_entry_with_its_reason_and_lists_the_rest(workspace: Workspace, saved_mlp) -> None:
    expected = break_entries(workspace)
    scan = workspace.scan()
    assert [r.id for r in scan.records] == [saved_mlp.id]
    assert {b.id for b in scan.broken} == set(expected)
    for entry in scan.broken:
        assert expected[entry.id] in entry.reason, entry
    assert workspace.records() == list(scan.records)


def test_unreadable_metadata_raises_a_typed_error_naming_the_model(workspace: Workspace, saved_mlp) -> None:
    break_entries(workspace)
    for model_id in ("not-utf8", "truncated-json", "invalid-record"):
        with pytest.raises(DamagedModelError, match=model_id) as error:
            workspace.load(model_id)
        assert isinstance(error.value, CheckpointError) and error.value.model_id == model_id


def test_list_shows_broken_entries_in_json_and_text_and_every_other_model(capsys, trained_mlp, tmp_path) -> None:
    workspace = Workspace(tmp_path / "listed")
    good = trained_mlp.save_to(workspace)
    expected = break_entries(workspace)
    status, output = run_json(capsys, "list", "--workspace", str(workspace.root))
    assert status == 0
    assert [m["id"] for m in output["models"]] == [good.id]
    assert {b["id"] for b in output["broken"]} == set(expected)
    assert all(b["reason"] for b in output["broken"])
    assert main(["list", "--workspace", str(workspace.root)]) == 0
    text = capsys.readouterr().out
    assert good.id in text
    assert all(f"BROKEN {name}:" in text for name in expected)


@pytest.mark.parametrize("page", ["pages/home.py", "pages/models.py", "pages/fuse.py", "pages/hessian.py"])
def test_pages_warn_about_each_broken_entry_and_still_list_the_models(app_workspace, page: str) -> None:
    (record,) = train_quick_models(app_workspace)
    expected = break_entries(app_workspace)
    at = open_app(page)
    assert not at.exception
    warnings = "\n".join(messages(at.warning))
    assert all(name.replace("-", "\\-") in warnings for name in expected), warnings
    if page in ("pages/home.py", "pages/models.py"):
        assert list(at.dataframe[0].value["name"]) == [record.name]


# --- 2. export never clobbers, never writes a non-regular file or into the workspace ---------------------------------


def test_export_refuses_an_existing_file_unless_overwrite(workspace: Workspace, saved_mlp, tmp_path) -> None:
    target = tmp_path / "mine.safetensors"
    target.write_bytes(b"someone's notes")
    with pytest.raises(OutputFileError, match=str(target)):
        workspace.export(saved_mlp.id, target)
    assert target.read_bytes() == b"someone's notes"
    assert workspace.export(saved_mlp.id, target, overwrite=True) == target
    assert read_checkpoint(target)[1]["id"] == saved_mlp.id


def test_export_into_a_folder_follows_the_same_rules_for_the_file_inside(workspace, saved_mlp, tmp_path) -> None:
    first = workspace.export(saved_mlp.id, tmp_path)
    assert first == tmp_path / f"{saved_mlp.id}.safetensors"
    with pytest.raises(OutputFileError, match="already exists"):
        workspace.export(saved_mlp.id, tmp_path)
    first.unlink()
    os.mkfifo(first)
    with pytest.raises(OutputFileError, match="not a regular file"):
        workspace.export(saved_mlp.id, tmp_path, overwrite=True)


def test_export_never_replaces_a_fifo_or_a_link_even_with_overwrite(workspace, saved_mlp, tmp_path) -> None:
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    link = tmp_path / "link.safetensors"
    link.symlink_to(fifo)
    for target in (fifo, link):
        with pytest.raises(OutputFileError, match="not a regular file|symbolic link"):
            workspace.export(saved_mlp.id, target, overwrite=True)
    assert fifo.is_fifo() and link.is_symlink()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["link.safetensors", "pipe", "ws"]


def test_export_never_writes_into_the_workspaces_own_folders(trained_mlp, workspace, saved_mlp) -> None:
    other = trained_mlp.save_to(workspace)
    victim = weights_path(workspace, other)
    before = victim.read_bytes()
    targets = [
        victim,
        workspace.model_dir(other.id),
        workspace.root,
        workspace.root / "models",
        workspace.root / ".staging",
        workspace.root / "models" / "new.safetensors",
    ]
    for target in targets:
        with pytest.raises(OutputFileError, match="inside the workspace"):
            workspace.export(saved_mlp.id, target, overwrite=True)
    assert victim.read_bytes() == before
    workspace.load(other.id)


def test_export_to_an_empty_path_is_refused(workspace, saved_mlp, tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(OutputFileError, match="empty"):
        workspace.export(saved_mlp.id, "")
    assert not list(tmp_path.glob("*.safetensors"))


def test_export_errors_name_the_users_path_never_a_temporary(workspace, saved_mlp, tmp_path) -> None:
    target = tmp_path / "no-such-folder" / "x.safetensors"
    with pytest.raises(OutputFileError) as error:
        workspace.export(saved_mlp.id, target)
    assert str(target) in str(error.value) and ".tmp" not in str(error.value)


def test_cli_export_needs_force_to_replace_and_refuses_an_empty_out(capsys, cli_model, tmp_path) -> None:
    target = tmp_path / "out.safetensors"
    target.write_bytes(b"keep me")
    status, output = run_json(capsys, "export", cli_model.id, "--out", str(target))
    assert status == 1 and output["error"]["type"] == "OutputFileError" and str(target) in output["error"]["message"]
    assert target.read_bytes() == b"keep me"
    status, output = run_json(capsys, "export", cli_model.id, "--out", str(target), "--force")
    assert status == 0 and output["path"] == str(target)
    status, output = run_json(capsys, "export", cli_model.id, "--out", "")
    assert status == 1 and output["error"]["type"] == "OutputFileError"


@pytest.fixture
def cli_model(trained_mlp, isolated_fusionlab_home: Path) -> ModelRecord:
    return trained_mlp.save_to(Workspace(isolated_fusionlab_home / "workspace"))


# --- 3. checksums -------------------------------------------------------------------------------------------------


def test_save_stores_the_sha256_of_each_file(trained_mlp, workspace: Workspace) -> None:
    record = trained_mlp.save_to(workspace, attachments={"transport": {"m": torch.eye(3)}})
    folder = workspace.model_dir(record.id)
    stored = json.loads((folder / "meta.json").read_text())["checksums"]
    assert stored == {
        name: hashlib.sha256((folder / name).read_bytes()).hexdigest()
        for name in ("model.safetensors", "transport.safetensors")
    }
    assert workspace.record(record.id).checksums == stored


@pytest.mark.parametrize("damage", [truncate, flip_last_byte], ids=["truncated", "edited"])
def test_damaged_weights_are_refused_naming_the_model_and_listed_as_broken(workspace, saved_mlp, tmp_path, damage):
    damage(weights_path(workspace, saved_mlp))
    for read in (workspace.load, lambda i: workspace.export(i, tmp_path)):
        with pytest.raises(DamagedModelError, match=f"{saved_mlp.id}.*model.safetensors"):
            read(saved_mlp.id)
    assert not list(tmp_path.glob("*.safetensors"))
    scan = Workspace(workspace.root).scan()
    assert scan.records == () and [b.id for b in scan.broken] == [saved_mlp.id]


def test_an_edit_after_a_scan_is_noticed_by_the_next_scan(workspace, saved_mlp) -> None:
    assert [r.id for r in workspace.scan().records] == [saved_mlp.id]
    path = weights_path(workspace, saved_mlp)
    flip_last_byte(path)
    os.utime(path, ns=(time.time_ns(), time.time_ns() + 1_000_000))
    assert [b.id for b in workspace.scan().broken] == [saved_mlp.id]


def test_a_damaged_attachment_is_refused_naming_the_model(trained_mlp, workspace) -> None:
    record = trained_mlp.save_to(workspace, attachments={"transport": {"m": torch.eye(3)}})
    flip_last_byte(workspace.model_dir(record.id) / "transport.safetensors")
    with pytest.raises(DamagedModelError, match=f"{record.id}.*transport.safetensors"):
        workspace.load_tensors(record.id, "transport")
    assert [b.id for b in workspace.scan().broken] == [record.id]


def test_a_model_saved_before_checksums_loads_unverified(capsys, trained_mlp, workspace, tmp_path) -> None:
    record = trained_mlp.save_to(workspace)
    drop_checksums(workspace, record)
    model, loaded = workspace.load(record.id)
    assert loaded.checksums == {}
    assert torch.equal(model(trained_mlp.data.x_test[:5]), trained_mlp.model(trained_mlp.data.x_test[:5]))
    status, output = run_json(capsys, "list", "--workspace", str(workspace.root))
    assert status == 0 and [(m["id"], m["checksum"]) for m in output["models"]] == [(record.id, False)]
    truncate(weights_path(workspace, record))
    assert [b.id for b in workspace.scan().broken] == [record.id]
    with pytest.raises(DamagedModelError, match="not a readable safetensors"):
        workspace.load(record.id)


@pytest.mark.parametrize(
    "command",
    [
        ["evaluate", "{a}"],
        ["export", "{a}", "--out", "{tmp}"],
        ["finetune", "{a}", "--epochs", "1"],
        ["fuse", "--method", "average", "--models", "{a}", "{b}"],
        ["hessian", "{a}"],
    ],
    ids=["evaluate", "export", "finetune", "fuse", "hessian"],
)
def test_every_command_on_a_truncated_model_exits_1_with_a_typed_error(capsys, trained_mlp, tmp_path, command):
    workspace = Workspace(tmp_path / "ws")
    a, b = trained_mlp.save_to(workspace), trained_mlp.save_to(workspace)
    truncate(weights_path(workspace, a))
    args = [part.format(a=a.id, b=b.id, tmp=tmp_path) for part in command]
    status, output = run_json(capsys, *args, "--workspace", str(workspace.root))
    assert status == 1
    assert output["error"]["type"] == "DamagedModelError" and a.id in output["error"]["message"]


# --- 8 (part). an export whose FusionLab metadata is damaged is refused, not imported as a plain state_dict -------


@pytest.mark.parametrize("header", ["{not json", "null", "[1, 2]"], ids=["not-json", "null", "list"])
def test_an_export_with_damaged_metadata_is_refused_even_with_a_spec(trained_mlp, workspace, tmp_path, header):
    path = tmp_path / "export.safetensors"
    save_file(
        {k: v.contiguous() for k, v in trained_mlp.model.state_dict().items()},
        str(path),
        metadata={"fusionlab": header},
    )
    with pytest.raises(CheckpointError, match="FusionLab metadata"):
        workspace.import_checkpoint(path, spec=trained_mlp.spec, dataset="digits")
    assert workspace.records() == []


# --- 4. stale temporaries, killed and concurrent writers ----------------------------------------------------------


def test_opening_removes_stale_staging_folders_and_json_temporaries(workspace: Workspace, saved_mlp) -> None:
    stale = workspace.root / ".staging" / "0123abcd"
    stale.mkdir()
    (stale / "model.safetensors").write_bytes(b"half")
    folder = workspace.model_dir(saved_mlp.id)
    (folder / "results").mkdir()
    temporaries = [folder / ".tmp-abc.json", folder / "results" / ".tmp-def.json"]
    for path in temporaries:
        path.write_text('{"half": ')
    reopened = Workspace(workspace.root)
    assert list((workspace.root / ".staging").iterdir()) == []
    assert not any(path.exists() for path in temporaries)
    assert [r.id for r in reopened.scan().records] == [saved_mlp.id] and reopened.scan().broken == ()
    reopened.load(saved_mlp.id)


def test_opening_never_removes_staging_while_a_writer_holds_the_lock(workspace: Workspace) -> None:
    live = workspace.root / ".staging" / "live-writer"
    with workspace.writing():
        live.mkdir()
        Workspace(workspace.root)
        assert live.is_dir()
    Workspace(workspace.root)
    assert not live.exists()


def test_on_a_filesystem_without_flock_saves_work_and_nothing_is_cleaned(trained_mlp, tmp_path, monkeypatch) -> None:
    def no_flock(handle, operation):
        raise OSError(errno.ENOSYS, "Function not implemented")

    monkeypatch.setattr(fcntl, "flock", no_flock)
    workspace = Workspace(tmp_path / "lustre")
    unknown = workspace.root / ".staging" / "maybe-live"
    unknown.mkdir()
    record = trained_mlp.save_to(workspace)
    Workspace(workspace.root)
    assert unknown.is_dir()
    workspace.load(record.id)


def subprocess_env(root: Path) -> dict[str, str]:
    return {**os.environ, "FUSIONLAB_WORKSPACE": str(root), "FUSIONLAB_DEVICE": "cpu", "OMP_NUM_THREADS": "1"}


def wait_for_staging(staging: Path, process: subprocess.Popen, count: int, timeout: float = 60.0) -> bool:
    """Poll ``staging`` until the ``count``-th new save folder appears; False if the process ended first."""
    earlier = set(os.listdir(staging))
    seen: set[str] = set()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        seen.update(set(os.listdir(staging)) - earlier)
        if len(seen) >= count:
            return True
        if process.poll() is not None:
            return False
        time.sleep(0.0002)  # a save's fsync'd write takes milliseconds: polling faster only burns a shared core
    raise AssertionError(f"no save {count} within {timeout} s")


def test_kill_9_during_saves_leaves_only_whole_models_and_the_next_open_cleans_up(tmp_path: Path) -> None:
    root = tmp_path / "killed"
    staging = Workspace(root).root / ".staging"
    seeds = [str(s) for s in range(40)]
    left_behind = 0
    kills = (1, 3, 6, 10)
    for kill_at_save in kills:
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "fusion",
                "train",
                "--arch",
                "mlp",
                "--hidden",
                "256",
                "256",
                "--epochs",
                "1",
                "--quiet",
                "--seed",
                *seeds,
            ],
            cwd=REPO_ROOT,
            env=subprocess_env(root),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        try:
            assert wait_for_staging(staging, process, kill_at_save), process.stderr.read().decode()
            process.send_signal(signal.SIGKILL)
        finally:
            process.wait(timeout=30)
        assert process.returncode == -signal.SIGKILL
        left_behind += any(staging.iterdir())
    assert left_behind > 0, "no kill landed inside a save: the test did not exercise a killed save"
    reopened = Workspace(root)
    assert list(staging.iterdir()) == []
    scan = reopened.scan()
    assert scan.broken == () and len(scan.records) >= sum(k - 1 for k in kills)
    for record in scan.records:
        reopened.load(record.id)


WRITER = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from fusion.models import ModelSpec, build_model
    from fusion.data import dataset_normalization
    from fusion.workspace import Workspace

    root, start, tag, count = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3], int(sys.argv[4])
    spec = ModelSpec("mlp", (1, 8, 8), 10, hidden=(128,))
    models = [build_model(spec, seed=seed) for seed in range(count)]
    (start.parent / f"ready-{tag}").touch()
    while not start.exists():
        time.sleep(0.001)
    for seed, model in enumerate(models):
        for _ in range(OPENS_PER_SAVE):  # each open runs the stale-staging cleaner while the other writer saves
            workspace = Workspace(root)
        workspace.save(model, spec=spec, dataset="digits", normalization=dataset_normalization("digits"), seed=seed,
                       name=f"{tag}-{seed}")
    """
).replace("OPENS_PER_SAVE", "5")


def test_two_concurrent_writers_into_one_workspace_keep_every_model(tmp_path: Path) -> None:
    root, start, count = tmp_path / "shared", tmp_path / "start", 40
    Workspace(root)
    writers = [
        subprocess.Popen(
            [sys.executable, "-c", WRITER, str(root), str(start), tag, str(count)],
            cwd=REPO_ROOT,
            env=subprocess_env(root),
            stderr=subprocess.PIPE,
            text=True,
        )
        for tag in ("a", "b")
    ]
    deadline = time.monotonic() + 120
    while not all((tmp_path / f"ready-{tag}").exists() for tag in "ab"):
        assert time.monotonic() < deadline and all(w.poll() is None for w in writers), "a writer did not start"
        time.sleep(0.01)
    start.touch()
    for writer in writers:
        _, errors = writer.communicate(timeout=120)
        assert writer.returncode == 0, errors
    workspace = Workspace(root)
    scan = workspace.scan()
    assert scan.broken == ()
    assert sorted(r.name for r in scan.records) == sorted(f"{t}-{s}" for t in "ab" for s in range(count))
    for record in scan.records:
        workspace.load(record.id)
    assert list((root / ".staging").iterdir()) == []


@pytest.mark.parametrize(
    "content", [b"\xff\xfe", b'{"rows": [1,', b"[1, 2]"], ids=["not-utf8", "truncated", "not-object"]
)
def test_a_damaged_stored_result_raises_a_typed_error_naming_the_model(saved_mlp, workspace, content):
    stored = workspace.save_result(saved_mlp.id, ResultRecord.make("comparison", [saved_mlp.id], {}, {"rows": []}))
    (workspace.results_dir(saved_mlp.id) / "comparison" / f"{stored.key}.json").write_bytes(content)
    with pytest.raises(DamagedResultError, match=f"comparison result {stored.key} of {saved_mlp.id} is damaged"):
        workspace.results(saved_mlp.id, "comparison")
