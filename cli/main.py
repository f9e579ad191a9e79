"""The command line: ``python -m fusion COMMAND ...`` (or ``fusionlab COMMAND ...``), a front end over the library
like the app's pages.

Every command takes ``--json`` and then prints exactly one JSON object on stdout (progress goes to stderr), so
scripts, batch jobs and SLURM arrays can drive FusionLab. Refused input exits with status 1 and a message (and, with
``--json``, an ``{"error": {"type", "message"}}`` object); a command line that does not parse exits with status 2.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import traceback
from collections.abc import Sequence
from typing import Any

from cli.analysis_commands import add_analysis_commands
from cli.commands import (
    add_dataset_option,
    add_fusion_options,
    add_spec_options,
    command_delete,
    command_demo,
    command_device,
    command_evaluate,
    command_export,
    command_finetune,
    command_fuse,
    command_import,
    command_list,
    command_train,
)
from cli.output import failure, human_readable, strict_json
from cli.sweep_commands import add_sweep_commands
from fusion.distributed import init_from_environment, is_writer, shutdown
from fusion.errors import FusionError, UsageError
from fusion.registry import methods
from fusion.sources import trust_factory
from fusion.train import OPTIMIZERS, TrainConfig
from fusion.workspace import Workspace

NEGATIVE_NUMBER = re.compile(r"^-(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?$|^-inf(inity)?$", re.IGNORECASE)
"""What argparse reads as a negative number rather than a flag: ``-1``, ``-0.5``, ``-.5``, ``-1e9``, ``-1E-3``
(argparse's own pattern stops at decimals, so ``--perturb-low -1e9`` failed to parse)."""


class CommandParser(argparse.ArgumentParser):
    """argparse whose refusals raise :class:`UsageError` (so ``--json`` can report them) instead of printing the usage
    and exiting; its sub-command parsers are of the same class."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._negative_number_matcher = NEGATIVE_NUMBER

    def error(self, message: str) -> Any:
        raise UsageError(f"{self.prog}: {message}")


def help_method(argv: Sequence[str]) -> str | None:
    """The method of ``fuse --method M ... --help``, whose help then lists that method's own options and defaults (a
    run accepts every method's flags, so that an option of another method is refused by name)."""
    if "fuse" not in argv or not {"-h", "--help"} & set(argv) or "--method" not in argv[:-1]:
        return None
    method = argv[argv.index("--method") + 1]
    return method if method in methods() else None


def parser(method: str | None = None) -> argparse.ArgumentParser:
    """The command line's parser; with ``method``, ``fuse`` lists only that method's options."""
    common = CommandParser(add_help=False)
    common.add_argument(
        "--workspace", help="workspace folder (default: $FUSIONLAB_WORKSPACE or ~/.fusionlab/workspace)"
    )
    common.add_argument("--json", action="store_true", help="print exactly one JSON object on stdout")
    common.add_argument("--quiet", action="store_true", help="no progress on stderr")
    common.add_argument(
        "--download",
        action="store_true",
        help="allow torchvision to download a missing dataset (an image folder is read in place, never downloaded)",
    )

    common.add_argument(
        "--trust-factory",
        action="append",
        default=[],
        metavar="MODULE:CALLABLE",
        help="run this python: factory when a stored model names it (repeatable; see FUSIONLAB_FACTORIES): a "
        "workspace is data, so a factory it names runs only when this machine trusts it",
    )

    main = CommandParser(prog="python -m fusion", description="FusionLab: train, fuse and analyse networks.")
    commands = main.add_subparsers(dest="command", required=True)

    train = commands.add_parser("train", parents=[common], help="train models and save them to the workspace")
    add_spec_options(train, required=True)
    add_dataset_option(train, default="digits")
    train.add_argument("--seed", type=int, nargs="+", default=[0], help="one model per seed")
    defaults = TrainConfig()
    train.add_argument("--epochs", type=int, default=defaults.epochs)
    train.add_argument("--lr", type=float, default=defaults.lr)
    train.add_argument("--batch-size", type=int, default=defaults.batch_size)
    train.add_argument("--optimizer", choices=OPTIMIZERS, default=defaults.optimizer)
    train.add_argument("--weight-decay", type=float, default=defaults.weight_decay)
    train.add_argument("--augment", action="store_true", help="random crops and flips (CIFAR)")
    train.add_argument(
        "--pretrained",
        nargs="?",
        const="default",
        metavar="TAG",
        help="start a torchvision:/timm: network from its published weights (TAG, e.g. IMAGENET1K_V1; default: the "
        "library's default) found in the local cache; --download fetches them if missing",
    )
    train.set_defaults(run=command_train)

    demo = commands.add_parser("demo", parents=[common], help="build the offline demo ensemble")
    demo.add_argument("--vit", action="store_true", help="build the demo's pair of Vision Transformers instead")
    demo.set_defaults(run=command_demo)
    commands.add_parser("list", parents=[common], help="list the workspace's models").set_defaults(run=command_list)
    commands.add_parser("device", parents=[common], help="the compute device in use").set_defaults(run=command_device)

    evaluate_ = commands.add_parser("evaluate", parents=[common], help="evaluate a model on its dataset")
    evaluate_.add_argument("id")
    add_dataset_option(evaluate_, default=None)
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
    add_dataset_option(import_, default=None)
    import_.add_argument("--name")
    import_.set_defaults(run=command_import)

    fuse_ = commands.add_parser("fuse", parents=[common], help="fuse workspace models and save the result")
    fuse_.add_argument("--method", choices=methods(), required=True)
    fuse_.add_argument("--models", nargs="+", required=True, help="ids of the models to fuse")
    fuse_.add_argument("--name")
    fuse_.add_argument("--finetune-epochs", type=int, default=0, help="fine-tune the fused model for N epochs")
    fuse_.add_argument("--finetune-lr", type=float, default=1e-3)
    add_fusion_options(fuse_, method)
    fuse_.set_defaults(run=command_fuse)

    finetune = commands.add_parser("finetune", parents=[common], help="fine-tune a model and save it as a new one")
    finetune.add_argument("id")
    finetune.add_argument("--epochs", type=int, default=5)
    finetune.add_argument("--lr", type=float, default=1e-3)
    finetune.add_argument("--batch-size", type=int, default=64)
    finetune.add_argument("--optimizer", choices=OPTIMIZERS, default="adam")
    finetune.add_argument("--seed", type=int, default=0)
    finetune.set_defaults(run=command_finetune)

    delete = commands.add_parser("delete", parents=[common], help="delete a model, or one of its stored results")
    delete.add_argument("id")
    delete.add_argument("--result", metavar="KEY", help="delete only this stored result of the model (see results ID)")
    delete.set_defaults(run=command_delete)
    add_analysis_commands(commands, common)
    add_sweep_commands(commands, common)
    return main


DISTRIBUTED_COMMANDS = ("hessian", "landscape")
"""The commands that shard their data over the ranks of a ``torchrun`` launch (:mod:`fusion.distributed`)."""


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command. Exit status 0 on success, 2 for a command line that does not parse, 1 for any other failure
    and 130 when interrupted; a traceback is printed only with ``FUSIONLAB_DEBUG=1``."""
    argv = list(sys.argv[1:] if argv is None else argv)
    as_json = "--json" in argv
    try:
        args = parser(help_method(argv)).parse_args(argv)
        as_json = args.json
        if init_from_environment() and args.command not in DISTRIBUTED_COMMANDS:
            raise UsageError(
                f"{args.command} runs in one process; under torchrun only {' and '.join(DISTRIBUTED_COMMANDS)} do"
            )
        for factory in args.trust_factory:
            trust_factory(factory)
        writer = is_writer()
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
    finally:
        shutdown()
    if writer:
        return emit(text)
    return 0


def emit(text: str) -> int:
    """Print the command's output; a reader that closed the pipe early (``| head -c 1``) ends the command quietly
    with status 141 (128 + SIGPIPE, what a shell reports for a killed writer) instead of a traceback."""
    try:
        print(text, flush=True)
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    return 0
