"""How every long computation reports how far it got: ``progress(done, total, message)``.

The library calls the callback it is given; front ends decide what it does (a progress bar and a cancel check in the
app, a line on stderr on the command line).
"""

from __future__ import annotations

from collections.abc import Callable

Progress = Callable[[int, int, str], None]
"""``progress(done, total, message)``: ``done`` of ``total`` steps finished, ``message`` says what is running."""


def no_progress(done: int, total: int, message: str) -> None:
    """The progress callback that reports nothing."""
