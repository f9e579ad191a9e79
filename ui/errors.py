"""Errors on the page: a refused input becomes a red message, never a stack trace in the browser."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager

import streamlit as st

from fusion.errors import FusionError
from ui.jobs import JobBusy

logger = logging.getLogger("fusionlab.app")

MAX_MESSAGE = 500


def unexpected_error_message(exc: BaseException) -> str:
    """``"Unexpected error: <type>: <message>"``, shortened to a line or two."""
    text = f"Unexpected error: {type(exc).__name__}: {exc}"
    return text if len(text) <= MAX_MESSAGE else text[: MAX_MESSAGE - 1] + "…"


@contextmanager
def report_errors() -> Iterator[None]:
    """Run the ``with`` body; show a :class:`FusionError` as ``st.error(message)`` (a busy job runner as a warning),
    and any other exception as a one-line ``st.error`` while its traceback goes to the server log.

    The rest of the body is skipped after an error; the page goes on below the ``with`` block. Streamlit's own
    control flow (``st.rerun``, ``st.stop``) derives from ``BaseException`` and passes through untouched.
    """
    try:
        yield
    except JobBusy as exc:
        st.warning(str(exc))
    except FusionError as exc:
        st.error(str(exc))
    except Exception as exc:
        logger.exception("unexpected error on a page")
        st.error(unexpected_error_message(exc))
