"""The README's library example runs as printed."""

from __future__ import annotations

import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def library_example() -> str:
    section = README.read_text().split("## Library use", 1)[1]
    match = re.search(r"```python\n(.*?)```", section, re.S)
    assert match, "the Library use section has a python example"
    return match.group(1)


def test_the_readme_library_example_runs_and_fuses(capsys) -> None:
    exec(compile(library_example(), str(README), "exec"), {})
    fused, barrier, hessian = capsys.readouterr().out.strip().splitlines()
    accuracy = float(re.search(r"fused: ([\d.]+) %", fused).group(1))
    assert accuracy > 80 and "REPAIR renormalised" in fused
    assert float(re.search(r"([-\d.]+) nats", barrier).group(1)) < 1.0
    top, trace = (float(value) for value in re.search(r"λ1 ([\d.e+-]+), trace ([\d.e+-]+)", hessian).groups())
    assert 0 < top < trace  # the trace of a PSD-dominated Hessian exceeds its top eigenvalue
