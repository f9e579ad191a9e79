"""Every printed fusion command line parses back to exactly the run's configuration (issue 10, item 11)."""

import shlex

import pytest

from cli.commands import fusion_options
from cli.main import main, parser
from fusion.command_lines import fusion_command_lines
from fusion.registry import resolve
from fusion.train import TrainConfig

NON_DEFAULT = {
    "average": {"weights": (0.25, 0.75), "recompute_bn": False, "repair": True},
    "ensemble": {"reference": 1},
    "ot": {"mode": "activations", "metric": "sqeuclidean", "sweeps": 2, "samples": 50, "seed": 3, "verify": False},
    "matching": {"mode": "activations", "sweeps": 7, "repair": True},
    "transplant": {"variant": "hierarchical"},
    "cla": {"onto": "deep", "match_last": False, "layer_cost": "widths"},
    "intra": {"sparsity": 0.3, "rows": "sum"},
    "prune": {"sparsity": 0.7},
}


def parsed(line: str):
    words = shlex.split(line)
    assert words[:3] == ["python", "-m", "fusion"]
    return parser().parse_args(words[3:])


@pytest.mark.parametrize("method", sorted(NON_DEFAULT))
def test_a_fusion_command_line_parses_back_to_the_runs_options(method):
    options = dict(NON_DEFAULT[method])
    expected = resolve(method, options).options
    [line] = fusion_command_lines(method, ["m-a", "m-b"], options)
    args = parsed(line)
    assert args.method == method and args.models == ["m-a", "m-b"]
    assert resolve(method, fusion_options(args)).options == expected


def test_the_command_lines_own_fine_tune_recipe_becomes_its_flags():
    recipe = TrainConfig(epochs=7, lr=3e-4).to_dict()
    [line] = fusion_command_lines("ot", ["a", "b"], {"sweeps": 2}, recipe)
    args = parsed(line)
    assert (args.finetune_epochs, args.finetune_lr) == (7, 3e-4)
    assert resolve("ot", fusion_options(args)).options.sweeps == 2


def test_another_fine_tune_recipe_becomes_a_finetune_command():
    recipe = TrainConfig(epochs=4, lr=0.01, optimizer="sgd", batch_size=32, seed=5).to_dict()
    fuse, finetune = fusion_command_lines("average", ["a", "b"], {}, recipe)
    assert parsed(fuse).finetune_epochs == 0
    args = parsed(finetune)
    assert (args.epochs, args.lr, args.optimizer, args.batch_size, args.seed) == (4, 0.01, "sgd", 32, 5)


@pytest.mark.parametrize("method,sweeps", [("matching", 100), ("ot", 3)])
def test_fuse_help_for_one_method_lists_its_own_options_and_defaults(method, sweeps, capsys):
    with pytest.raises(SystemExit) as done:
        main(["fuse", "--method", method, "--help"])
    assert done.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    sweeps_help = text.split("--sweeps SWEEPS ")[-1].split(" --")[0]
    assert sweeps_help.endswith(f"(default {sweeps})"), sweeps_help
    assert ("--solver" in text) == (method == "ot") and "--variant" not in text and "--sparsity" not in text
