"""A form's submit checked in one go: every refused value, named by the label beside its field, in one message.

Streamlit's own range checks on a number input only outline the field in red and drop the submit without a word, so
the forms leave the ranges to the library's configs (:mod:`fusion.problems`), which report every problem at once. A
page builds its configs through one :class:`FormCheck`, then starts its job only when :meth:`FormCheck.passed`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TypeVar

import streamlit as st

from fusion.errors import ConfigError, FusionError

T = TypeVar("T")


def sentence(text: str) -> str:
    return text if text.endswith((".", "?", "!")) else text + "."


def refusal_lines(error: FusionError, labels: Mapping[str, str]) -> list[str]:
    """What ``error`` refuses, one line per problem, every field under its entry of ``labels``; an error without a
    list of problems is one line, its message."""
    problems = error.problems if isinstance(error, ConfigError) else ()
    return [sentence(problem.text(labels)) for problem in problems] or [sentence(str(error))]


def refusal_message(lines: list[str]) -> str:
    """One message for every problem of a submit: a line that nothing was started, then a bulleted list."""
    head = "Nothing was started: " + ("correct this value" if len(lines) == 1 else f"correct these {len(lines)} values")
    return head + " and submit again.\n\n" + "\n".join(f"- {line}" for line in lines)


@dataclass
class FormCheck:
    """The problems of one submit, gathered from every config the form builds, shown together."""

    lines: list[str] = field(default_factory=list)

    def build(self, make: Callable[[], T], labels: Mapping[str, str]) -> T | None:
        """``make()``, or ``None`` when it is refused: then each of its problems is kept, with the field names of
        its config replaced by the form's ``labels``."""
        try:
            return make()
        except FusionError as exc:
            self.lines.extend(refusal_lines(exc, labels))
            return None

    def refuse(self, line: str) -> None:
        """Keep a problem the form finds itself (a choice of models, say)."""
        self.lines.append(sentence(line))

    def passed(self) -> bool:
        """Whether nothing was refused; otherwise show every problem as one error, where the page calls this."""
        if self.lines:
            st.error(refusal_message(self.lines))
        return not self.lines
