"""Widgets for a method's options, generated from its options dataclass (:func:`fusion.options.option_fields`), and
the command line that reproduces a run."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import streamlit as st

from fusion.options import OptionField, option_fields
from fusion.problems import Checks, given

LABELS = {
    "recompute_bn": "Recompute BatchNorm statistics",
    "recompute_batchnorm": "Recompute BatchNorm statistics",
    "reg": "Sinkhorn regularisation",
    "metric": "Ground metric",
    "mode": "Compare neurons by",
    "normalize_rows": "Normalise rows",
    "cost_normalization": "Cost normalisation",
    "repair": "REPAIR (renormalise neurons)",
    "verify": "Verify hard alignments",
    "onto": "Fuse onto",
    "match_last": "Match the last hidden layers",
    "relu_approximation": "ReLU approximation (merge)",
    "top_k": "Top-k eigenvalues",
    "trace_tolerance": "Trace tolerance",
    "kernel_width": "Density kernel width",
    "cache_graph": "Cache the gradient graph",
    "reorthogonalize": "Reorthogonalise Lanczos vectors",
    "block_size": "Vectors per product batch",
    "layers": "Per-layer Hessians",
    "max_products": "Max Hessian-vector products",
    "max_seconds": "Max seconds",
    "warn_seconds": "Warn above seconds",
    "max_memory_gb": "Max memory (GiB)",
    "points_per_call": "Points per vmapped call",
    "finetune_epochs": "Fine-tune epochs",
    "finetune_lr": "Fine-tune learning rate",
    "finetune_optimizer": "Fine-tune optimizer",
    "arch": "Architecture",
    "perturb_low": "Perturbation: first t",
    "perturb_high": "Perturbation: last t",
    "perturb_points": "Perturbation: points",
    "step_scale": "Step scale (unit of t)",
    "random_directions": "Random directions",
    "batch_parts": "Sample parts (eigenvalue spread)",
    "plane_points": "Eigenvector plane: points a side (0: none)",
    "hessian_samples": "Hessian samples (test examples)",
    "lr": "Fine-tune learning rate",
}
"""Widget labels for the option names that do not read as words; the others are the name, capitalised."""


def label_of(option: OptionField) -> str:
    """The label beside the option's widget: its entry in :data:`LABELS` or its name as words, with what 0 means
    for an optional count."""
    label = LABELS.get(option.name, option.name.replace("_", " ").capitalize())
    return label + " (0: all)" if option.kind == "optional int" else label


def option_labels(options_class: type) -> dict[str, str]:
    """Every option's widget label by option name, to name a refused value as the form shows it."""
    return {option.name: label_of(option) for option in option_fields(options_class)}


def kept(key: str, default: Any, allowed: Sequence[Any] | None = None) -> None:
    """Give the widget ``key`` its value through Session State only (no ``value=``), so that it keeps what the user
    typed when a rerun disables or re-creates it (a submitted form while its job runs): Streamlit resets a widget
    whose identity changed to its default, so the last value is shadowed and set through Session State before the
    widget is created, every run."""
    shadow = f"kept.{key}"
    if key in st.session_state and (allowed is None or st.session_state[key] in allowed):
        st.session_state[shadow] = st.session_state[key]
    value = st.session_state.get(shadow, default)
    st.session_state[key] = value if allowed is None or value in allowed else default


def option_widget(option: OptionField, key: str, disabled: bool) -> Any:
    label = label_of(option)
    common: dict[str, Any] = {"help": option.help, "key": key, "disabled": disabled}
    if option.kind == "bool":
        kept(key, bool(option.default))
        return st.checkbox(label, **common)
    if option.kind == "choice":
        kept(key, str(option.default), option.choices)
        return st.selectbox(label, option.choices, **common)
    if option.kind == "int":
        kept(key, int(option.default))
        return st.number_input(label, step=1, **common)
    if option.kind == "optional int":
        kept(key, int(option.default or 0))
        return st.number_input(label, step=1, **common)
    if option.name == "sparsity":
        kept(key, float(option.default))
        return st.slider(label, 0.05, 0.95, step=0.05, **common)
    if option.kind == "float":
        kept(key, float(option.default))
        return st.number_input(label, format="%.4g", **common)
    if option.kind == "str":
        kept(key, str(option.default))
        return st.text_input(label, **common)
    kept(key, "" if option.default is None else ", ".join(map(str, option.default)))
    return st.text_input(label, **{**common, "help": option.help + " (comma-separated; empty for the default)"})


def option_widgets(
    options_class: type, prefix: str, disabled: bool = False, columns: int = 3, first: Sequence[str] = ()
) -> dict[str, Any]:
    """One widget per option, laid out in columns; returns the raw widget values by option name. With ``first``,
    only those options are shown at once and the rest wait in a folded "Advanced options" section, with one line
    above it that lists the ones that differ from their defaults."""
    fields = option_fields(options_class)
    shown = [f for f in fields if not first or f.name in first]
    folded = [f for f in fields if first and f.name not in first]
    values = widget_grid(shown, prefix, disabled, columns)
    if folded:
        changed = [
            f"{label_of(f)} {st.session_state[key]}"
            for f in folded
            if (key := f"{prefix}.{f.name}") in st.session_state and str(st.session_state[key]) != str(f.default)
        ]
        st.caption(
            "Advanced options changed from their defaults: " + "; ".join(changed)
            if changed
            else "Advanced options: all at their defaults."
        )
        with st.expander("Advanced options"):
            values |= widget_grid(folded, prefix, disabled, columns)
    return values


def widget_grid(fields: Sequence[OptionField], prefix: str, disabled: bool, columns: int) -> dict[str, Any]:
    values = {}
    grid = st.columns(columns)
    for index, option in enumerate(fields):
        with grid[index % columns]:
            values[option.name] = option_widget(option, f"{prefix}.{option.name}", disabled)
    return values


def parse_options(options_class: type, values: dict[str, Any]) -> dict[str, Any]:
    """Widget values to keyword options: numbers typed, comma lists parsed; only values that differ from the
    defaults are returned. The options are built once to check them: a :class:`ConfigError` lists every unreadable
    list and every value the options class refuses (:mod:`fusion.problems`)."""
    result = {}
    checks = Checks()
    for option in option_fields(options_class):
        value = values[option.name]
        if option.kind == "floats":
            text = str(value).strip()
            if not text:
                continue
            try:
                value = tuple(float(part) for part in text.split(","))
            except ValueError:
                checks.add(option.name, f"{{{option.name}}}: expected numbers separated by commas, got {given(text)}")
                continue
        elif option.kind == "int":
            value = int(value)
        elif option.kind == "optional int":
            value = int(value) or None
        elif option.kind == "float":
            value = float(value)
        elif option.kind == "str":
            value = str(value).strip()
        if value != option.default:
            result[option.name] = value
    checks.nested(lambda: options_class(**result))
    checks.done()
    return result
