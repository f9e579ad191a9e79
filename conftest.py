"""The doctests of the library (``pytest --doctest-modules fusion analysis studies``, run by ``.ci/run``): on the CPU
with one thread, so that the numbers they print are the same on every machine. ``fusion/__main__.py`` runs the
command line when imported, so it is not collected."""

from __future__ import annotations

import os

os.environ["FUSIONLAB_DEVICE"] = "cpu"

import torch  # noqa: E402  (after the device is pinned: fusion.device reads it once per process)

torch.set_num_threads(1)

collect_ignore = ["fusion/__main__.py"]
