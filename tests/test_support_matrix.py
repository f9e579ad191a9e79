"""The README's support matrix, regenerated: every architecture's checks (studies.support) must give the verdicts the
README states. The measured figures in parentheses are this run's (written to test-artifacts/support_matrix.md);
``FUSIONLAB_UPDATE_README=1`` writes the regenerated table into the README."""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from fusion.models import build_model, default_spec
from studies.support import CHECKS, SupportReport, support_report, table_header

README = Path(__file__).resolve().parents[1] / "README.md"
ARTIFACT = Path(__file__).resolve().parents[1] / "test-artifacts" / "support_matrix.md"
BEGIN, END = "<!-- support matrix: begin -->", "<!-- support matrix: end -->"
ARCHITECTURES = [
    "torchvision:resnet18",
    "torchvision:resnet50",
    "torchvision:vgg11_bn",
    "torchvision:mobilenet_v2",
    "torchvision:efficientnet_b0",
    "torchvision:convnext_tiny",
    "torchvision:densenet121",
    "torchvision:resnext50_32x4d",
    "torchvision:regnet_y_400mf",
    "timm:resnet18",
    "timm:mobilenetv3_small_050",
    "otfusion:mlpnet",
    "otfusion:vgg11_nobias",
    "otfusion:resnet18_nobias_nobn",
    "vit",
    "timm:vit_tiny_patch16_224",
]
REPORTS: dict[str, SupportReport] = {}


def verdict(cell: str) -> str:
    """A cell without this run's figures: ``yes``, or ``no: reason``."""
    return "yes" if cell.startswith("yes") else cell


def readme_rows() -> dict[str, list[str]]:
    text = README.read_text()
    table = text[text.index(BEGIN) + len(BEGIN) : text.index(END)]
    rows = {}
    for line in table.strip().splitlines()[2:]:
        cells = [c.strip() for c in line.strip().strip("|").split(" | ")]
        rows[cells[0].strip("`")] = cells[2:]
    return rows


@pytest.fixture
def every_core() -> Iterator[None]:
    """All of the machine's cores for one row: these networks are full size (VGG-11-BN has 128.8M parameters), unlike
    the suite's tiny models that run on one thread (tests/conftest.py)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(os.cpu_count() or 1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_the_architecture_supports_what_the_readme_says(arch: str, every_core: None) -> None:
    shape = (1, 28, 28) if arch == "otfusion:mlpnet" else (3, 32, 32)
    spec = default_spec(arch, shape, 10)
    generator = torch.Generator().manual_seed(0)
    inputs = torch.randn(8, *shape, generator=generator)
    labels = torch.randint(0, 10, (8,), generator=generator)
    report = support_report(arch, build_model(spec, seed=0), build_model(spec, seed=1), inputs, labels)
    REPORTS[arch] = report
    write_artifact()
    stated = readme_rows()
    assert arch in stated, f"{arch} has no row in the README's support matrix"
    measured = {check.check: verdict(check.cell) for check in report.checks}
    assert measured == dict(zip(CHECKS, (verdict(c) for c in stated[arch])))


def write_artifact() -> None:
    rows = [REPORTS[arch].row() for arch in ARCHITECTURES if arch in REPORTS]
    table = table_header() + "\n" + "\n".join(rows)
    ARTIFACT.parent.mkdir(parents=True, exist_ok=True)
    ARTIFACT.write_text(table + "\n")
    if os.environ.get("FUSIONLAB_UPDATE_README") == "1" and len(rows) == len(ARCHITECTURES):
        text = README.read_text()
        pattern = re.compile(re.escape(BEGIN) + ".*?" + re.escape(END), re.S)
        README.write_text(pattern.sub(lambda _: f"{BEGIN}\n{table}\n{END}", text))
