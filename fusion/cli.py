"""The command line: ``python -m fusion COMMAND ...``.

Every command takes ``--json`` and then prints exactly one JSON object on stdout (progress goes to stderr), so
scripts, batch jobs and SLURM arrays can drive FusionLab. Refused input exits with status 1 and a message (and, with
``--json``, an ``{"error": {"type", "message"}}`` object).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import traceback
from pathlib import Path
from typing import Any, Callable, Sequence

from analysis.cli import add_analysis_commands
from fusion.data import DATASETS, load_dataset
from fusion.device import default_device, describe_device
from fusion.errors import FusionError, UsageError
from fusion.models import ARCHITECTURES, ModelSpec, default_spec
from fusion.fuse import REGISTRY, methods
from fusion.options import OptionField, add_option_arguments, given_options, option_fields
from fusion.pipeline import Stored, build_demo_ensemble, finetune_and_save, fuse_and_save, train_and_save
from fusion.train import TrainConfig, evaluate
from fusion.workspace import ModelRecord, Workspace

Command = Callable[[argparse.Namespace, Workspace], dict[str, Any]]


def record_summary(record: ModelRecord, workspace: Workspace) -> dict[str, Any]:
    return {
        "id": record.id,
        "name": record.name,
        "arch": record.spec.describe(),
        "dataset": record.dataset,
        "method": record.method,
        "parents": record.parents,
        "parameters": record.parameters,
        "test_accuracy": record.metrics.get("test_accuracy"),
        "test_loss": record.metrics.get("test_loss"),
        "path": str(workspace.model_dir(record.id)),
    }


def stored_summary(stored: Stored, workspace: Workspace) -> dict[str, Any]:
    """A model a run saved or reused (:class:`fusion.pipeline.Stored`), with ``reused`` saying which."""
    return {**record_summary(stored.record, workspace), "reused": stored.reused}


def stderr_progress(quiet: bool) -> Callable[[int, int, str], None]:
    def report(done: int, total: int, message: str) -> None:
        if not quiet:
            print(f"[{done}/{total}] {message}", file=sys.stderr, flush=True)

    return report


def spec_from_args(args: argparse.Namespace, input_shape: tuple[int, int, int], num_classes: int) -> ModelSpec:
    return default_spec(
        args.arch,
        input_shape,
        num_classes,
        hidden=tuple(args.hidden) if args.hidden else None,
        channels=tuple(args.channels) if args.channels else None,
        width=args.width,
        batch_norm=args.batch_norm,
        bias=args.bias,
    )


def command_train(args: argparse.Namespace, workspace: Workspace) -> dict[str, Any]:
    data = load_dataset(args.dataset, download=args.download)
    spec = spec_from_args(args, data.input_shape, data.num_classes)
    records = []
    for seed in args.seed:
        config = TrainConfig(
            epochs=args.epochs,
            lr=args.lr,
            batch_size=args.batch_size,
            optimizer=args.optimizer,
            weight_decay=args.weight_decay,
            seed=seed,
            augment=args.augment,
        )
        records.append(train_and_save(workspace, spec, data.name, config, progress=stderr_progress(args.quiet)))
    return {"models": [stored_summary(s, workspace) for s in records], "device": str(default_device())}


def command_demo(args: argparse.Namespace, workspace: Workspace) -> dict[str, Any]:
    records = build_demo_ensemble(workspace, progress=stderr_progress(args.quiet))
    return {"models": [stored_summary(s, workspace) for s in records], "device": str(default_device())}


def command_list(args: argparse.Namespace, workspace: Workspace) -> dict[str, Any]:
    """The loadable models (``checksum``: false for one saved before checksums, read unverified) and every broken
    entry with its reason."""
    scan = workspace.scan()
    return {
        "workspace": str(workspace.root),
        "models": [{**record_summary(r, workspace), "checksum": bool(r.checksums)} for r in scan.records],
        "broken": [{"id": b.id, "reason": b.reason} for b in scan.broken],
    }


def command_evaluate(args: argparse.Namespace, workspace: Workspace) -> dict[str, Any]:
    model, record = workspace.load(args.id)
    data = load_dataset(record.dataset, download=args.download)
    results = {}
    for split in ("train", "test"):
        metrics = evaluate(model, *data.split(split))
        results[f"{split}_accuracy"], results[f"{split}_loss"] = metrics.accuracy, metrics.loss
    record = workspace.update(args.id, metrics={**record.metrics, **results})
    return {"id": record.id, "dataset": record.dataset, "device": str(default_device()), **results}


def command_export(args: argparse.Namespace, workspace: Workspace) -> dict[str, Any]:
    path = workspace.export(args.id, args.out, overwrite=args.force)
    return {"id": args.id, "path": str(path)}


def command_import(args: argparse.Namespace, workspace: Workspace) -> dict[str, Any]:
    spec = None
    if args.arch:
        if not args.dataset:
            raise FusionError("--arch needs --dataset (the dataset the checkpoint was trained on)")
        data = load_dataset(args.dataset, download=args.download)
        spec = spec_from_args(args, data.input_shape, data.num_classes)
    if args.spec:
        spec = ModelSpec.from_dict(json.loads(Path(args.spec).read_text()))
    model, record = workspace.import_checkpoint(args.checkpoint, spec=spec, dataset=args.dataset, name=args.name)
    data = load_dataset(record.dataset, download=args.download)
    metrics = evaluate(model, *data.split("test"))
    record = workspace.update(record.id, metrics={"test_accuracy": metrics.accuracy, "test_loss": metrics.loss})
    return {"models": [record_summary(record, workspace)]}


def fusion_options(args: argparse.Namespace) -> dict[str, Any]:
    """The fusion options given on the command line (unset flags keep the method's defaults)."""
    options = given_options(args, fusion_option_fields())
    if args.ensemble_step is not None:
        if "weights" in options:
            raise FusionError("give --ensemble-step or --weights, not both")
        options["weights"] = (1.0 - args.ensemble_step, args.ensemble_step)
    return options


def command_fuse(args: argparse.Namespace, workspace: Workspace) -> dict[str, Any]:
    run = fuse_and_save(
        workspace, args.models, args.method, fusion_options(args), name=args.name, progress=stderr_progress(args.quiet)
    )
    output: dict[str, Any] = {"method": args.method, "parents": args.models, **run.metrics, "report": run.report}
    if run.record is not None:
        output["models"] = [{**record_summary(run.record, workspace), "reused": run.reused}]
    if args.finetune_epochs:
        config = TrainConfig(epochs=args.finetune_epochs, lr=args.finetune_lr, seed=0)
        if run.record is None:
            raise FusionError("an ensemble is not a single network and cannot be fine-tuned")
        tuned = finetune_and_save(workspace, run.record.id, config, progress=stderr_progress(args.quiet))
        output["models"].append(stored_summary(tuned, workspace))
    return output


def command_finetune(args: argparse.Namespace, workspace: Workspace) -> dict[str, Any]:
    config = TrainConfig(epochs=args.epochs, lr=args.lr, batch_size=args.batch_size, optimizer=args.optimizer, seed=args.seed)
    stored = finetune_and_save(workspace, args.id, config, progress=stderr_progress(args.quiet))
    return {"models": [stored_summary(stored, workspace)]}


def fusion_option_fields() -> list[OptionField]:
    """Every method's options, each name once (the first method's help and default)."""
    fields: dict[str, OptionField] = {}
    for spec in REGISTRY.values():
        for option in option_fields(spec.options):
            fields.setdefault(option.name, option)
    return list(fields.values())


def add_fusion_options(parser: argparse.ArgumentParser) -> None:
    add_option_arguments(parser, fusion_option_fields())
    parser.add_argument("--ensemble-step", type=float, help="otfusion's --ensemble-step s: weights (1-s, s) for two models")


def command_delete(args: argparse.Namespace, workspace: Workspace) -> dict[str, Any]:
    workspace.delete(args.id)
    return {"deleted": args.id}


def command_device(args: argparse.Namespace, workspace: Workspace) -> dict[str, Any]:
    return {"device": str(default_device()), "description": describe_device()}


def add_spec_options(parser: argparse.ArgumentParser, required: bool) -> None:
    parser.add_argument("--arch", choices=ARCHITECTURES, required=required, help="architecture")
    parser.add_argument("--hidden", type=int, nargs="+", help="hidden linear widths (mlp, cnn)")
    parser.add_argument("--channels", type=int, nargs="+", help="conv channels (cnn)")
    parser.add_argument("--width", type=float, help="width multiplier (vgg, resnet)")
    parser.add_argument("--batch-norm", action=argparse.BooleanOptionalAction, default=None, help="BatchNorm layers")
    parser.add_argument("--bias", action=argparse.BooleanOptionalAction, default=None, help="biases")


class CommandParser(argparse.ArgumentParser):
    """argparse whose refusals raise :class:`UsageError` (so ``--json`` can report them) instead of printing the usage
    and exiting; its sub-command parsers are of the same class."""

    def error(self, message: str) -> Any:
        raise UsageError(f"{self.prog}: {message}")


def parser() -> argparse.ArgumentParser:
    common = CommandParser(add_help=False)
    common.add_argument("--workspace", help="workspace folder (default: $FUSIONLAB_WORKSPACE or ~/.fusionlab/workspace)")
    common.add_argument("--json", action="store_true", help="print exactly one JSON object on stdout")
    common.add_argument("--quiet", action="store_true", help="no progress on stderr")
    common.add_argument("--download", action="store_true", help="allow torchvision to download a missing dataset")

    main = CommandParser(prog="python -m fusion", description="FusionLab: train, fuse and analyse networks.")
    commands = main.add_subparsers(dest="command", required=True)

    train = commands.add_parser("train", parents=[common], help="train models and save them to the workspace")
    add_spec_options(train, required=True)
    train.add_argument("--dataset", default="digits", choices=DATASETS)
    train.add_argument("--seed", type=int, nargs="+", default=[0], help="one model per seed")
    defaults = TrainConfig()
    train.add_argument("--epochs", type=int, default=defaults.epochs)
    train.add_argument("--lr", type=float, default=defaults.lr)
    train.add_argument("--batch-size", type=int, default=defaults.batch_size)
    train.add_argument("--optimizer", choices=("adam", "sgd"), default=defaults.optimizer)
    train.add_argument("--weight-decay", type=float, default=defaults.weight_decay)
    train.add_argument("--augment", action="store_true", help="random crops and flips (CIFAR)")
    train.set_defaults(run=command_train)

    commands.add_parser("demo", parents=[common], help="build the offline demo ensemble").set_defaults(run=command_demo)
    commands.add_parser("list", parents=[common], help="list the workspace's models").set_defaults(run=command_list)
    commands.add_parser("device", parents=[common], help="the compute device in use").set_defaults(run=command_device)

    evaluate_ = commands.add_parser("evaluate", parents=[common], help="evaluate a model on its dataset")
    evaluate_.add_argument("id")
    evaluate_.set_defaults(run=command_evaluate)

    export = commands.add_parser("export", parents=[common], help="write a model to one safetensors file")
    export.add_argument("id")
    export.add_argument("--out", required=True, help="a new file, or a folder (then <id>.safetensors inside it)")
    export.add_argument("--force", action="store_true", help="replace an existing regular file at --out")
    export.set_defaults(run=command_export)

    import_ = commands.add_parser("import", parents=[common], help="import a safetensors or state_dict checkpoint")
    import_.add_argument("checkpoint")
    add_spec_options(import_, required=False)
    import_.add_argument("--spec", help="a JSON file holding a model spec (instead of --arch ...)")
    import_.add_argument("--dataset", choices=DATASETS)
    import_.add_argument("--name")
    import_.set_defaults(run=command_import)

    fuse_ = commands.add_parser("fuse", parents=[common], help="fuse workspace models and save the result")
    fuse_.add_argument("--method", choices=methods(), required=True)
    fuse_.add_argument("--models", nargs="+", required=True, help="ids of the models to fuse")
    fuse_.add_argument("--name")
    fuse_.add_argument("--finetune-epochs", type=int, default=0, help="fine-tune the fused model for N epochs")
    fuse_.add_argument("--finetune-lr", type=float, default=1e-3)
    add_fusion_options(fuse_)
    fuse_.set_defaults(run=command_fuse)

    finetune = commands.add_parser("finetune", parents=[common], help="fine-tune a model and save it as a new one")
    finetune.add_argument("id")
    finetune.add_argument("--epochs", type=int, default=5)
    finetune.add_argument("--lr", type=float, default=1e-3)
    finetune.add_argument("--batch-size", type=int, default=64)
    finetune.add_argument("--optimizer", choices=("adam", "sgd"), default="adam")
    finetune.add_argument("--seed", type=int, default=0)
    finetune.set_defaults(run=command_finetune)

    delete = commands.add_parser("delete", parents=[common], help="delete a model")
    delete.add_argument("id")
    delete.set_defaults(run=command_delete)
    add_analysis_commands(commands, common)
    return main


def finite(value: Any, replaced: list[int]) -> Any:
    """``value`` with every NaN or infinite float replaced by ``None`` (counted in ``replaced``), for strict JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        replaced[0] += 1
        return None
    if isinstance(value, dict):
        return {k: finite(v, replaced) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite(v, replaced) for v in value]
    return value


def strict_json(result: dict[str, Any]) -> str:
    """One JSON object, valid by the standard: non-finite numbers become ``null`` and ``non_finite_values`` counts
    them."""
    replaced = [0]
    cleaned = finite(result, replaced)
    if replaced[0]:
        cleaned["non_finite_values"] = replaced[0]
    return json.dumps(cleaned, allow_nan=False)


def failure(exc: BaseException, kind: str, message: str, as_json: bool, status: int) -> int:
    """Report a failure as one line on stderr and, under ``--json``, one ``{"error": ...}`` object on stdout."""
    if as_json:
        print(json.dumps({"error": {"type": kind, "message": message}}))
    print(f"error: {message}", file=sys.stderr)
    return status


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command. Exit status 0 on success, 2 for a command line that does not parse, 1 for any other failure
    and 130 when interrupted; a traceback is printed only with ``FUSIONLAB_DEBUG=1``."""
    argv = list(sys.argv[1:] if argv is None else argv)
    as_json = "--json" in argv
    try:
        args = parser().parse_args(argv)
        as_json = args.json
        result = args.run(args, Workspace(args.workspace))
        text = strict_json(result) if as_json else human_readable(result)
    except UsageError as exc:
        return failure(exc, "UsageError", str(exc), as_json, 2)
    except KeyboardInterrupt as exc:
        return failure(exc, "Interrupted", "interrupted", as_json, 130)
    except (FusionError, OSError, json.JSONDecodeError) as exc:
        return failure(exc, type(exc).__name__, str(exc) or type(exc).__name__, as_json, 1)
    except Exception as exc:
        if os.environ.get("FUSIONLAB_DEBUG") == "1":
            traceback.print_exc()
        message = f"internal error ({type(exc).__name__}: {exc}); rerun with FUSIONLAB_DEBUG=1 for the traceback"
        return failure(exc, "InternalError", message, as_json, 1)
    print(text)
    return 0


def human_readable(result: dict[str, Any]) -> str:
    if "models" in result:
        lines = [
            f"{m['id']:<40} {m['arch']:<22} {m['dataset']:<9} {m['method']:<9} "
            + (f"test acc {100 * m['test_accuracy']:.2f}%" if m.get("test_accuracy") is not None else "")
            + ("  (no checksum: unverified)" if m.get("checksum") is False else "")
            + ("  (reused: stored by an earlier run with the same inputs)" if m.get("reused") else "")
            for m in result["models"]
        ]
        lines += [f"BROKEN {b['id']}: {b['reason']}" for b in result.get("broken", [])]
        return "\n".join(lines) or "no models"
    return "\n".join(f"{k}: {v}" for k, v in result.items())
