"""The compute device, chosen once per process: CUDA when present, else CPU."""

from __future__ import annotations

import functools
import os
import re

import torch

from fusion.errors import ConfigError

DEVICE_VARIABLE = "FUSIONLAB_DEVICE"


@functools.lru_cache(maxsize=1)
def default_device() -> torch.device:
    """The device every computation runs on when none is given: CUDA device 0 when available, else the CPU.

    ``FUSIONLAB_DEVICE`` (``cpu``, ``cuda`` or ``cuda:N``) overrides the choice, for tests and for pinning a job. The
    choice is made once per process (the first call reads the variable); later calls return the same device.

    Returns
    -------
    torch.device
        ``cuda`` (device 0), ``cuda:N`` or ``cpu``.

    Raises
    ------
    ConfigError
        When ``FUSIONLAB_DEVICE`` holds any other value, or names a CUDA device this machine does not have.

    Examples
    --------
    >>> import torch
    >>> from fusion import default_device
    >>> device = default_device()
    >>> device.type in ("cpu", "cuda"), default_device() is device
    (True, True)
    >>> torch.zeros(3, device=device).device.type == device.type
    True
    """
    forced = os.environ.get(DEVICE_VARIABLE, "").strip()
    if forced:
        return forced_device(forced)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def forced_device(value: str) -> torch.device:
    """The device ``FUSIONLAB_DEVICE=value`` names, checked against this machine."""
    match = re.fullmatch(r"cpu|cuda(?::(\d+))?", value)
    if match is None:
        raise ConfigError(f"{DEVICE_VARIABLE}={value!r} is not a device: use cpu, cuda or cuda:N (or unset it)")
    if value != "cpu":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        index = int(match.group(1) or 0)
        if index >= count:
            raise ConfigError(
                f"{DEVICE_VARIABLE}={value!r}, but this machine has {count or 'no'} CUDA device{'s' * (count != 1)}: "
                "use cpu (or unset it)"
            )
    return torch.device(value)


def available_memory(device: torch.device | None = None) -> int:
    """Bytes free for new tensors on ``device``: CUDA's free memory (``torch.cuda.mem_get_info``), or the CPU's
    ``MemAvailable`` from ``/proc/meminfo`` (the kernel's estimate of what can be allocated without swapping; free
    physical pages where that file does not exist)."""
    device = device or default_device()
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    try:
        with open("/proc/meminfo") as stream:
            for line in stream:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def describe_device(device: torch.device | None = None) -> str:
    """A one-line human description: the GPU's name and memory, or the CPU's core count."""
    device = device or default_device()
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        return f"CUDA · {props.name} · {props.total_memory / 2**30:.0f} GiB"
    return f"CPU · {torch.get_num_threads()} thread{'s' if torch.get_num_threads() != 1 else ''} (no CUDA device found)"
