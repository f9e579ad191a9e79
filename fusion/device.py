"""The compute device, chosen once per process: CUDA when present, else CPU."""

from __future__ import annotations

import functools
import os

import torch


@functools.lru_cache(maxsize=1)
def default_device() -> torch.device:
    """CUDA device 0 when available, else the CPU.

    ``FUSIONLAB_DEVICE`` (``cpu`` or ``cuda``) overrides the choice, for tests and for pinning a job.
    """
    forced = os.environ.get("FUSIONLAB_DEVICE")
    if forced:
        return torch.device(forced)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def describe_device(device: torch.device | None = None) -> str:
    """A one-line human description: the GPU's name and memory, or the CPU's core count."""
    device = device or default_device()
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        return f"CUDA · {props.name} · {props.total_memory / 2**30:.0f} GiB"
    return f"CPU · {torch.get_num_threads()} thread{'s' if torch.get_num_threads() != 1 else ''} (no CUDA device found)"
