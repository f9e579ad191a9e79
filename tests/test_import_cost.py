"""Importing the library's public names loads neither torch-pruning nor, through it, timm and torchvision: those are
imported by the functions that need them, so ``from fusion import fuse`` costs little more than ``import torch``."""

from __future__ import annotations

import importlib
import subprocess
import sys
import types

import pytest

HEAVY = ("torch_pruning", "timm", "torchvision")


@pytest.mark.parametrize(
    "statement",
    [
        "from fusion import fuse",
        "from fusion import fuse, build_model, load_dataset, neuron_groups, train",
        "import analysis; from analysis import linear_interpolation, neuron_norms",
    ],
)
def test_public_imports_load_no_heavy_dependency(statement: str, repo_root) -> None:
    probe = f"import sys; {statement}; print(sorted(m for m in {HEAVY!r} if m in sys.modules))"
    loaded = subprocess.run(
        [sys.executable, "-c", probe], cwd=repo_root, capture_output=True, text=True, check=True, timeout=120
    )
    assert loaded.stdout.strip() == "[]"


def test_an_exported_name_stays_the_export_after_its_namesake_submodule_is_imported() -> None:
    import fusion.methods.ot
    import fusion.registry
    import fusion.train  # noqa: F401  (importing a submodule sets it as an attribute of its package)
    from fusion import methods, train

    assert train is sys.modules["fusion.train"].train
    assert methods is fusion.registry.methods
    assert sys.modules["fusion.methods.ot"] is sys.modules["fusion.methods"].ot


@pytest.mark.parametrize("package", ["fusion", "analysis", "studies"])
def test_every_public_name_resolves_to_what_its_module_defines(package: str) -> None:
    module = importlib.import_module(package)
    for name in module.__all__:
        value = getattr(module, name)
        assert not isinstance(value, types.ModuleType), f"{package}.{name} is a module"
        home = getattr(module, "EXPORTS", {}).get(name)
        if home is not None:
            assert value is getattr(importlib.import_module(home), name)
