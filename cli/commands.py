"""The workspace commands: train, demo, list, evaluate, export, import, fuse, finetune, delete, device. Each takes the
parsed arguments and the workspace, calls the library, and returns the summary the command prints."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from analysis.units import in_percent
from cli.arguments import add_option_arguments, given_options
from cli.output import record_summary, stderr_progress, stored_summary
from fusion.command_lines import command_line, fusion_command_lines, train_command
from fusion.data import DATASET_FORMS, check_dataset_name, dataset_signature, load_dataset
from fusion.device import default_device, describe_device
from fusion.errors import ConfigError, DatasetError, FusionError
from fusion.models import ARCHITECTURES, ModelSpec, default_spec
from fusion.options import OptionField, option_fields
from fusion.registry import REGISTRY, resolve
from fusion.sources import SOURCES, is_sourced, trust_factory
from fusion.train import TrainConfig
from fusion.workspace import Workspace
from studies.pipeline import (
    build_demo_ensemble,
    evaluate_and_save,
    finetune_and_save,
    fuse_and_save,
    import_and_evaluate,
    is_evaluated,
    train_and_save,
    vit_demo_members,
)


def spec_from_args(args: argparse.Namespace, input_shape: tuple[int, int, int], num_classes: int) -> ModelSpec:
    """The spec the ``--arch`` options describe; a ``python:`` factory named on the command line is trusted."""
    if args.arch.startswith("python:"):
        trust_factory(args.arch.removeprefix("python:"))
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


def architecture(value: str) -> str:
    """An ``--arch`` value: a zoo architecture or ``SOURCE:NAME`` of a known source (the source checks the name)."""
    if value in ARCHITECTURES or (is_sourced(value) and value.partition(":")[0] in SOURCES):
        return value
    raise argparse.ArgumentTypeError(
        f"invalid choice: {value!r} (choose from {', '.join(ARCHITECTURES)}, or SOURCE:NAME with SOURCE one of "
        f"{', '.join(SOURCES)})"
    )


def dataset_name(value: str) -> str:
    """A ``--dataset`` value in canonical form (:func:`fusion.data.check_dataset_name`); a malformed one is a usage
    error."""
    try:
        return check_dataset_name(value)
    except DatasetError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc


def add_dataset_option(parser: argparse.ArgumentParser, default: str | None) -> None:
    parser.add_argument(
        "--dataset",
        type=dataset_name,
        default=default,
        metavar="DATASET",
        help=f"{DATASET_FORMS}; an image folder holds one sub-folder of images per class, or train and test (or val) "
        "folders of them (see the README)",
    )


def add_spec_options(parser: argparse.ArgumentParser, required: bool) -> None:
    parser.add_argument(
        "--arch",
        type=architecture,
        required=required,
        metavar="ARCH",
        help=f"a zoo architecture ({', '.join(ARCHITECTURES)}) or SOURCE:NAME: torchvision:resnet18, timm:resnet18, "
        "otfusion:mlpnet, nt:smallnn, clafusion:vgg13_student_nobias (the seed repositories' networks with their "
        "parameter names; the README lists them), python:MODULE:CALLABLE (your own factory, called with input_shape "
        "and num_classes)",
    )
    parser.add_argument("--hidden", type=int, nargs="+", help="hidden linear widths (mlp, cnn)")
    parser.add_argument("--channels", type=int, nargs="+", help="conv channels (cnn)")
    parser.add_argument("--width", type=float, help="width multiplier (vgg, resnet)")
    parser.add_argument("--batch-norm", action=argparse.BooleanOptionalAction, default=None, help="BatchNorm layers")
    parser.add_argument("--bias", action=argparse.BooleanOptionalAction, default=None, help="biases")


def command_train(args: argparse.Namespace, workspace: Workspace) -> dict[str, Any]:
    configs = [
        TrainConfig(
            epochs=args.epochs,
            lr=args.lr,
            batch_size=args.batch_size,
            optimizer=args.optimizer,
            weight_decay=args.weight_decay,
            seed=seed,
            augment=args.augment,
        )
        for seed in args.seed
    ]
    data = load_dataset(args.dataset, download=args.download)
    spec = spec_from_args(args, data.input_shape, data.num_classes)
    records = [
        train_and_save(
            workspace,
            spec,
            data.name,
            config,
            progress=stderr_progress(args.quiet),
            download=args.download,
            pretrained=args.pretrained,
        )
        for config in configs
    ]
    return {
        "models": [stored_summary(s, workspace) for s in records],
        "device": str(default_device()),
        "command": train_command(spec, data.name, configs[0], args.seed) if args.pretrained is None else None,
    }


def command_demo(args: argparse.Namespace, workspace: Workspace) -> dict[str, Any]:
    members = vit_demo_members() if args.vit else None
    records = build_demo_ensemble(workspace, members, progress=stderr_progress(args.quiet))
    return {"models": [stored_summary(s, workspace) for s in records], "device": str(default_device())}


def command_list(args: argparse.Namespace, workspace: Workspace) -> dict[str, Any]:
    """The loadable models (``checksum``: false for one saved before checksums, read unverified) and every broken
    entry with its reason."""
    scan = workspace.scan()
    return {
        "workspace": str(workspace.root),
        "models": [
            {**record_summary(r, workspace), "checksum": bool(r.checksums), "evaluated": is_evaluated(r)}
            for r in scan.records
        ],
        "broken": [{"id": b.id, "reason": b.reason} for b in scan.broken],
    }


def command_evaluate(args: argparse.Namespace, workspace: Workspace) -> dict[str, Any]:
    """Evaluate a model on its own dataset or, with ``--dataset``, on another of the same input shape and classes
    (:func:`studies.pipeline.evaluate_and_save`); ``stored_as`` names the metrics keys the scores were stored under."""
    evaluation = evaluate_and_save(workspace, args.id, getattr(args, "dataset", None), download=args.download)
    output = {
        "id": args.id,
        "dataset": evaluation.dataset,
        "device": str(default_device()),
        **in_percent(evaluation.scores),
    }
    if evaluation.dataset != evaluation.record.dataset:
        output |= {"model_dataset": evaluation.record.dataset, "stored_as": list(evaluation.stored)}
    return output


def command_export(args: argparse.Namespace, workspace: Workspace) -> dict[str, Any]:
    path = workspace.export(args.id, args.out, overwrite=args.force)
    return {"id": args.id, "path": str(path)}


def command_import(args: argparse.Namespace, workspace: Workspace) -> dict[str, Any]:
    """Import a checkpoint and evaluate it on its dataset's test split; a dataset not on this machine leaves it stored
    "not evaluated" (``"evaluated": false`` and the ``reason``; a note on stderr without ``--json``). The spec is
    built from the dataset's shape, known without its files for the built-in datasets."""
    spec = None
    if args.arch:
        if not args.dataset:
            raise FusionError("--arch needs --dataset (the dataset the checkpoint was trained on)")
        spec = spec_from_args(args, *dataset_signature(args.dataset))
    if args.spec:
        spec = ModelSpec.from_dict(json.loads(Path(args.spec).read_text()))
    imported = import_and_evaluate(
        workspace, args.checkpoint, spec=spec, dataset=args.dataset, name=args.name, download=args.download
    )
    output = {"models": [record_summary(imported.record, workspace)], **evaluated(imported.not_evaluated)}
    note_not_evaluated(args, imported.record.id, imported.not_evaluated)
    return output


def evaluated(reason: str | None) -> dict[str, Any]:
    """The output's ``evaluated`` flag and, for a model stored without test metrics, the ``reason``."""
    return {"evaluated": True} if reason is None else {"evaluated": False, "reason": reason}


def note_not_evaluated(args: argparse.Namespace, model_id: str, reason: str | None) -> None:
    """Say on stderr (the human output; ``--json`` carries it as ``reason``) that a model was stored without
    evaluation, why, and how to evaluate it later."""
    if reason is not None and not args.json:
        print(
            f"{model_id}: not evaluated: {reason}\n  evaluate it once the dataset is there: "
            f"python -m fusion evaluate {model_id}",
            file=sys.stderr,
        )


def fusion_option_fields(method: str | None = None) -> list[OptionField]:
    """The options of ``method`` with its own defaults or, for ``None``, every method's options, each name once (the
    first method's help and default)."""
    fields: dict[str, OptionField] = {}
    for spec in [resolve(method).spec] if method is not None else REGISTRY.values():
        for option in option_fields(spec.options):
            fields.setdefault(option.name, option)
    return list(fields.values())


def add_fusion_options(parser: argparse.ArgumentParser, method: str | None = None) -> None:
    add_option_arguments(parser, fusion_option_fields(method))
    parser.add_argument(
        "--ensemble-step", type=float, help="otfusion's --ensemble-step s: weights (1-s, s) for two models"
    )


def fusion_options(args: argparse.Namespace) -> dict[str, Any]:
    """The fusion options given on the command line (unset flags keep the method's defaults)."""
    options = given_options(args, fusion_option_fields())
    if args.ensemble_step is not None:
        if "weights" in options:
            raise FusionError("give --ensemble-step or --weights, not both")
        if not 0 <= args.ensemble_step <= 1:
            raise ConfigError(
                f"--ensemble-step must be in [0, 1] (the weight of the second model), got {args.ensemble_step}"
            )
        options["weights"] = (1.0 - args.ensemble_step, args.ensemble_step)
    return options


def command_fuse(args: argparse.Namespace, workspace: Workspace) -> dict[str, Any]:
    options = fusion_options(args)
    config = None
    if args.finetune_epochs:
        config = TrainConfig(epochs=args.finetune_epochs, lr=args.finetune_lr, seed=0)
        if resolve(args.method).spec.output == "ensemble":
            raise FusionError(f"{args.method} is a prediction ensemble, not a single network, and cannot be fine-tuned")
        load_dataset(workspace.record(args.models[0]).dataset)  # fine-tuning needs it: refused before fusing
    run = fuse_and_save(
        workspace, args.models, args.method, options, name=args.name, progress=stderr_progress(args.quiet)
    )
    output: dict[str, Any] = {
        "method": args.method,
        "parents": args.models,
        **in_percent(run.metrics),
        **evaluated(run.not_evaluated),
        "report": run.report.to_dict(),
        "command": " && ".join(
            fusion_command_lines(args.method, args.models, options, config.to_dict() if config else None)
        ),
    }
    if run.record is not None:
        output["models"] = [{**record_summary(run.record, workspace), "reused": run.reused}]
        note_not_evaluated(args, run.record.id, run.not_evaluated)
    if config is not None and run.record is not None:
        tuned = finetune_and_save(
            workspace, run.record.id, config, progress=stderr_progress(args.quiet), model=run.model
        )
        output["models"].append(stored_summary(tuned, workspace))
    return output


def command_finetune(args: argparse.Namespace, workspace: Workspace) -> dict[str, Any]:
    config = TrainConfig(
        epochs=args.epochs, lr=args.lr, batch_size=args.batch_size, optimizer=args.optimizer, seed=args.seed
    )
    stored = finetune_and_save(workspace, args.id, config, progress=stderr_progress(args.quiet))
    recipe = {k: v for k, v in config.to_dict().items() if k in ("epochs", "lr", "batch_size", "optimizer", "seed")}
    return {"models": [stored_summary(stored, workspace)], "command": command_line(["finetune", args.id], recipe)}


def command_delete(args: argparse.Namespace, workspace: Workspace) -> dict[str, Any]:
    if args.result is not None:
        removed = workspace.delete_result(args.id, args.result)
        return {"deleted": {"id": args.id, "result": removed.key, "kind": removed.kind}}
    workspace.delete(args.id)
    return {"deleted": args.id}


def command_device(args: argparse.Namespace, workspace: Workspace) -> dict[str, Any]:
    return {"device": str(default_device()), "description": describe_device()}
