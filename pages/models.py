"""Models: every model in the workspace, training new ones, importing checkpoints."""

import functools

import streamlit as st

from fusion.data import TORCHVISION_DATASETS, dataset_signature
from fusion.errors import FusionError
from fusion.models import check_fits_in_memory
from fusion.workspace import ModelRecord, Workspace
from studies.pipeline import NOT_EVALUATED, evaluate_and_save, is_evaluated
from ui.checkpoints import checkpoint_upload, export_bytes, forget_upload, import_upload
from ui.errors import report_errors
from ui.forms import (
    SPEC_LABELS,
    TRAINING_LABELS,
    architecture_fields,
    architecture_select,
    dataset_select,
    folder_missing,
    training_fields,
)
from ui.job_view import device_wait, show_job, start_job
from ui.options import kept
from ui.state import device, job_runner, select_models, selected_model_ids, workspace, workspace_models
from ui.tables import escape_markdown, show_models_table
from ui.training import train_models
from ui.validation import FormCheck

TRAIN_KIND = "train"
SELECTION_WIDGET = "models.selection"
CHECKPOINT_TYPES = ["safetensors", "pt", "pth", "bin"]
UPLOAD_KEY = "import.file"
FILE_MISSING = "Choose a checkpoint file."
FOLDER_MISSING = "Type the image folder's path (a folder on the server with one sub-folder of images per class)."
FLASH_KEY = "models.flash"
IMPORTED_KEY = "models.imported"
PRETRAINED_SOURCES = ("torchvision:", "timm:")


def sync_selection() -> None:
    select_models(st.session_state[SELECTION_WIDGET])


def model_actions(ws: Workspace, records: list[ModelRecord]) -> None:
    """The shared selection, a download button per selected model (and an evaluate button for one stored not
    evaluated), and deletion behind a confirmation."""
    by_id = {r.id: r for r in records}
    current = st.session_state.get(SELECTION_WIDGET, selected_model_ids())
    st.session_state[SELECTION_WIDGET] = [model_id for model_id in current if model_id in by_id]
    chosen = st.multiselect(
        "Selected models (the other pages start from this selection)",
        list(by_id),
        format_func=lambda model_id: f"{by_id[model_id].name} ({model_id})",
        key=SELECTION_WIDGET,
        on_change=sync_selection,
    )
    evaluate_waits = any(not is_evaluated(by_id[i]) for i in chosen) and device_wait("Evaluating")
    for model_id in chosen:
        name_column, evaluate_column, button_column = st.columns([3, 1, 1], vertical_alignment="center")
        name_column.markdown(f"**{escape_markdown(by_id[model_id].name)}** · `{model_id}`")
        if not is_evaluated(by_id[model_id]) and evaluate_column.button(
            "Evaluate",
            key=f"models.evaluate.{model_id}",
            disabled=evaluate_waits,
            help=f"{NOT_EVALUATED}: its dataset was not on disk; evaluate it once it is",
            icon=":material/fact_check:",
        ):
            evaluate_on_demand(ws, model_id)
        button_column.download_button(
            "Download",
            data=functools.partial(export_bytes, ws, model_id),
            file_name=f"{model_id}.safetensors",
            mime="application/octet-stream",
            key=f"models.download.{model_id}",
            on_click="ignore",
            icon=":material/download:",
        )
    if not chosen:
        return
    with st.form("models.delete", border=False):
        confirmed = st.checkbox(f"Yes, delete the {len(chosen)} selected model(s) permanently")
        delete = st.form_submit_button("Delete selected", disabled=device_wait("Deleting"), icon=":material/delete:")
    if delete and not confirmed:
        st.warning("Tick the confirmation box to delete.")
    elif delete:
        with report_errors():
            for model_id in chosen:
                ws.delete(model_id)
            select_models(i for i in selected_model_ids() if i not in chosen)
            del st.session_state[SELECTION_WIDGET]
            st.session_state[FLASH_KEY] = f"Deleted {len(chosen)} model(s)."
            st.rerun()


def evaluate_on_demand(ws: Workspace, model_id: str) -> None:
    """Evaluate a model stored "not evaluated" on its dataset, now that it may be on disk: the table then shows its
    scores, or the reason it still cannot be evaluated is shown."""
    with report_errors(), st.spinner("Evaluating…"):
        evaluation = evaluate_and_save(ws, model_id, device=device())
        accuracy = 100 * evaluation.scores["test_accuracy"]
        st.session_state[FLASH_KEY] = f"Evaluated `{model_id}` on {evaluation.dataset}: test accuracy {accuracy:.1f} %."
        st.rerun()


def readable(dataset: str) -> bool:
    """Whether the dataset's shape and classes can be known (an image folder is read for them); if not, the reason is
    shown and the form below waits for a readable one."""
    try:
        dataset_signature(dataset)
    except FusionError as exc:
        st.error(str(exc))
        return False
    return True


def train_section(ws: Workspace) -> None:
    """Train one model per seed of a chosen architecture and recipe, as one job."""
    st.subheader("Train new models")
    source_column, arch_column, dataset_column = st.columns(3)
    arch = architecture_select("train", (source_column, arch_column))
    dataset = dataset_select("train", dataset_column)
    no_folder = folder_missing("train")
    if not no_folder and not readable(dataset):
        return
    with st.form("train"):
        spec_inputs = architecture_fields("train", arch, "digits" if no_folder else dataset)
        training_inputs = training_fields("train")
        pretrained = False
        if arch.startswith(PRETRAINED_SOURCES):
            kept("train.pretrained", False)
            pretrained = st.checkbox(
                "Start from the published pretrained weights",
                key="train.pretrained",
                help="The library's default weights, read from the local cache (downloaded only with the box below); "
                "a head for another number of classes keeps its random initialisation",
            )
        download = st.checkbox(
            "Download the dataset or weights if they are missing",
            key="train.download",
            disabled=not (dataset in TORCHVISION_DATASETS or arch.startswith(PRETRAINED_SOURCES)),
        )
        submitted = st.form_submit_button("Train", type="primary")
    if submitted and no_folder:
        st.error(f"Before training: {FOLDER_MISSING}")
    elif submitted:
        form = FormCheck()
        options = form.build(spec_inputs.parse, SPEC_LABELS)
        configs = form.build(training_inputs.parse, TRAINING_LABELS)
        spec = form.build(lambda: options.build(*dataset_signature(dataset)), {}) if options is not None else None
        if form.passed():
            with report_errors():
                assert spec is not None and configs is not None
                check_fits_in_memory(spec, device())
                seeds = ", ".join(str(c.seed) for c in configs)
                start_job(
                    f"Train {spec.describe()} on {dataset} (seed {seeds})",
                    train_models,
                    ws,
                    options,
                    dataset,
                    configs,
                    download=download,
                    pretrained="default" if pretrained else None,
                    device=device(),
                    kind=TRAIN_KIND,
                )
    show_job(job_runner().latest(TRAIN_KIND))


def import_section(ws: Workspace) -> None:
    """Import a safetensors or PyTorch checkpoint, then evaluate it on its dataset's test split. The upload is held
    until it is imported or removed, whatever changes around it; what the form still lacks is named on Import."""
    st.subheader("Import a checkpoint")
    st.caption(
        "A FusionLab export carries its architecture and dataset. A plain state_dict needs both: choose them below. "
        "Files are read without executing code; pickles that carry code are refused."
    )
    upload = checkpoint_upload(UPLOAD_KEY, CHECKPOINT_TYPES)
    source_column, arch_column, dataset_column = st.columns(3)
    arch = architecture_select("import", (source_column, arch_column), from_file=True)
    dataset = dataset_select("import", dataset_column, from_file=True)
    no_folder = folder_missing("import")
    if dataset is not None and not no_folder and not readable(dataset):
        return
    with st.form("import"):
        spec_inputs = None
        if arch is not None:
            shapes_from = "digits" if dataset is None or no_folder else dataset
            spec_inputs = architecture_fields("import", arch, shapes_from)
        name = st.text_input("Name (optional)", key="import.name")
        submitted = st.form_submit_button("Import", type="primary", disabled=device_wait("Importing"))
    if IMPORTED_KEY in st.session_state:
        st.success(st.session_state.pop(IMPORTED_KEY))
    if not submitted:
        return
    missing = [text for text, absent in ((FILE_MISSING, upload is None), (FOLDER_MISSING, no_folder)) if absent]
    if missing:
        st.error("Before importing:\n" + "\n".join(f"- {item}" for item in missing))
        return
    with report_errors(), st.spinner("Importing and evaluating…"):
        record = import_upload(
            ws,
            upload.content,
            upload.name,
            options=spec_inputs.parse() if spec_inputs is not None else None,
            dataset=dataset,
            name=name.strip() or None,
            device=device(),
        )
        scored = (
            f"test accuracy {100 * record.metrics['test_accuracy']:.1f} %"
            if is_evaluated(record)
            else f"{NOT_EVALUATED}, {escape_markdown(record.dataset)} is not on this machine; select it above and "
            "press Evaluate once it is"
        )
        st.session_state[IMPORTED_KEY] = f"Imported {escape_markdown(record.name)} (`{record.id}`): {scored}."
        forget_upload(UPLOAD_KEY)
        st.rerun()


st.title("Models")
ws = workspace()
records = workspace_models(ws)
st.caption(f"{len(records)} model(s) in `{ws.root}`")
if FLASH_KEY in st.session_state:
    st.success(st.session_state.pop(FLASH_KEY))
show_models_table(records, detailed=True)
if records:
    model_actions(ws, records)
st.divider()
train_section(ws)
st.divider()
import_section(ws)
