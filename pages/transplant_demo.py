"""Neuron Transplantation demo: the NT paper's story on the offline demo ensemble, one step per click, each step a
job of :func:`studies.story.advance_story` with its explanation and live figure."""

import uuid

import pandas as pd
import streamlit as st

from analysis.fusion_figures import finetune_comparison_figure, neuron_norms_figure, survival_figure
from studies.figures import comparison_figure
from studies.runs import story_step_cost
from studies.story import (
    STEP_TITLES,
    Story,
    StoryOptions,
    advance_story,
    finetune_title,
    load_story,
    story_commands,
)
from ui.charts import show_chart, show_command, show_table
from ui.errors import report_errors
from ui.job_view import job_kind, restore_inputs, show_job, start_job
from ui.options import option_labels, option_widgets, parse_options
from ui.state import device, job_runner, workspace
from ui.validation import FormCheck

STORY_KEY = "demo.story"
SESSION_KEY = "demo.session"
APPLIED_KEY = "demo.applied_job"
RESTARTED_KEY = "demo.restarted_after"
DEMO_KIND = "transplant-demo"
METHOD_LABELS = {"transplant": "Neuron Transplantation", "ot": "OT fusion", "average": "vanilla averaging"}

st.title("Neuron Transplantation, step by step")
st.caption(
    "Öz et al., “Model Fusion via Neuron Transplantation” (ECML PKDD 2024): concatenate the members of an ensemble "
    "into one wide network, keep the largest neurons, fine-tune. Each click runs the next step on the offline digits "
    "demo; the models it creates are saved to the workspace."
)
ws = workspace()
restore_inputs(DEMO_KIND)
st.session_state.setdefault(SESSION_KEY, uuid.uuid4().hex[:12])
kind = job_kind(DEMO_KIND, [st.session_state[SESSION_KEY]])
job = job_runner().latest(kind)
if STORY_KEY not in st.session_state:
    st.session_state[STORY_KEY] = None
    with report_errors():
        st.session_state[STORY_KEY] = load_story(ws)
if job is not None and job.status == "done" and job.id != st.session_state.get(APPLIED_KEY):
    st.session_state[STORY_KEY] = job.result
    st.session_state[APPLIED_KEY] = job.id
story: Story | None = st.session_state[STORY_KEY]
pending = job is not None and job.active  # each step starts from the story the step queued or running returns


@st.cache_data(show_spinner="Timing a few training steps…", max_entries=16)
def next_step_time(root: str, options: StoryOptions, steps_done: int, _story: Story) -> str | None:
    """The estimated training time of the story's next step (:func:`studies.runs.story_step_cost`), ``None`` for a
    step that does not train; ``root``, ``options`` and ``steps_done`` key the cache (a story only grows)."""
    cost = story_step_cost(workspace(), _story, device())
    return cost.describe_seconds() if cost is not None and cost.units else None


def restart() -> None:
    st.session_state[STORY_KEY] = None
    latest = job_runner().latest(kind)
    st.session_state[APPLIED_KEY] = latest.id if latest is not None else None
    st.session_state[RESTARTED_KEY] = st.session_state[APPLIED_KEY]


with st.form("demo.form"):
    st.markdown("**Parents and fine-tune recipe** (fixed once the story has started; Restart to change them)")
    values = option_widgets(StoryOptions, "demo.options", pending or story is not None)
    submitted = st.form_submit_button(
        "Next step", type="primary", disabled=pending or (story is not None and story.finished)
    )
st.button("Restart", key="demo.restart", on_click=restart, disabled=pending or story is None)
next_time = None
if story is not None and not pending:
    next_time = next_step_time(str(ws.root), story.options, story.steps_done, story)
if next_time is not None:
    st.caption(f"The next step trains for {next_time} on this machine (a few steps timed here).")
if pending:
    st.caption("Next step and Restart wait for the step below to end: each step starts from the one before.")

if submitted:
    form = FormCheck()
    current = (
        story
        if story is not None
        else form.build(lambda: Story(StoryOptions(**parse_options(StoryOptions, values))), option_labels(StoryOptions))
    )
    if form.passed():
        assert current is not None
        with report_errors():
            step = current.steps_done
            start_job(
                f"NT demo · step {step + 1}: {STEP_TITLES[step]}",
                advance_story,
                ws,
                current,
                device=device(),
                kind=kind,
                inputs={SESSION_KEY: st.session_state[SESSION_KEY]},
            )
if job is None or job.active or job.id != st.session_state.get(RESTARTED_KEY):
    show_job(job)

if story is None:
    st.info(f"Click **Next step** to begin with step 1: {STEP_TITLES[0].lower()}.")
    st.stop()

options = story.options
st.caption(
    f"This story: {options.parents} demo {options.arch.upper()}s · fine-tune {options.finetune_epochs} epochs of "
    f"{options.finetune_optimizer.upper()} at lr {options.finetune_lr:g} · {story.steps_done} of {len(STEP_TITLES)} "
    f"steps done in {story.seconds:.1f} s of computation."
)


def percent(value: float) -> str:
    return f"{100 * value:.2f}%"


parents = story.parents
assert parents is not None
st.subheader(f"1. {STEP_TITLES[0]}")
trained = f" ({len(parents.trained)} of them trained just now)" if parents.trained else ""
st.markdown(
    f"Neuron Transplantation fuses fully trained members of an ensemble into one network of a member's size. Here "
    f"they are {len(parents.scores)} demo {options.arch.upper()}s{trained}, trained on the 8×8 digits with the same "
    f"recipe from different seeds. The best of them, {parents.best.model}, reaches "
    f"{percent(parents.best.test_accuracy)} on the {parents.test_size} test images (one image is "
    f"{100 / parents.test_size:.2f} points): that is the bar to beat."
)
show_chart(comparison_figure(parents.scores), "nt-demo-parents")

concatenation = story.concatenation
if concatenation is not None:
    st.subheader(f"2. {STEP_TITLES[1]}")
    widths = ", ".join(f"{concatenation.parent_widths[g]}→{wide}" for g, wide in concatenation.wide_widths.items())
    st.markdown(
        f"Stack the parents' neurons layer by layer: hidden weights become block diagonal, so each block only sees "
        f"its own parent's neurons, and the output layer reads every block with weight 1/{len(parents.scores)}. The "
        f"wide network ({widths} neurons per layer, {concatenation.wide.parameters:,} parameters) therefore computes "
        f"the ensemble's mean logits exactly: on the test set the largest logit difference is "
        f"{concatenation.max_logit_difference:.1e} (float rounding), {concatenation.disagreements} images are "
        f"classified differently, and both reach {percent(concatenation.wide.test_accuracy)}."
    )
    show_chart(
        comparison_figure([*parents.scores, concatenation.ensemble, concatenation.wide]), "nt-demo-concatenation"
    )

pruning = story.pruning
if concatenation is not None and pruning is not None:
    st.subheader(f"3. {STEP_TITLES[2]}")
    st.markdown(
        f"To get back to one parent's size, every layer of the wide network keeps its largest neurons (by the squared "
        f"L2 norm of their weights, torch-pruning's magnitude importance in the reference implementation), whichever "
        f"parent they come from; the small ones are sacrificed. Removing them breaks the function the wide network "
        f"computed: accuracy falls from {percent(concatenation.ensemble.test_accuracy)} to "
        f"{percent(pruning.transplanted.test_accuracy)} ({100 * pruning.accuracy_drop:.2f} points), the post-fusion "
        "loss the paper describes."
    )
    show_chart(comparison_figure([concatenation.ensemble, pruning.transplanted]), "nt-demo-pruning")
    roles = [s.role for s in parents.scores]
    counts = pd.DataFrame(
        [
            {
                "group": t.group,
                "kept": sum(t.kept),
                "of": len(t.kept),
                **{roles[p]: n for p, n in sorted(t.kept_per_parent().items())},
            }
            for t in pruning.survival
        ]
    )
    st.markdown("**Kept neurons per layer and parent**")
    show_table(counts, "nt-demo-kept-neurons")
    groups = [t.group for t in pruning.survival]
    group = st.selectbox("Layer (neuron group)", groups, key="demo.survival.group")
    survival = next(t for t in pruning.survival if t.group == group)
    show_chart(survival_figure(survival, roles), f"nt-demo-survival-{group}")
    side = st.radio("Neuron norm", ["incoming", "outgoing"], horizontal=True, key="demo.norms.side")
    show_chart(neuron_norms_figure(pruning.norms, side), f"nt-demo-norms-{side}")

finetune = story.finetune
if concatenation is not None and pruning is not None and finetune is not None:
    st.subheader(f"4. {finetune_title(pruning.transplanted.test_accuracy, finetune.finetuned.test_accuracy)}")
    st.markdown(
        f"A short fine-tune ({finetune.config['epochs']} epochs of {str(finetune.config['optimizer']).upper()} at lr "
        f"{finetune.config['lr']:g}) lets the transplanted neurons, which come from different parents, adapt to each "
        f"other: accuracy goes from {percent(pruning.transplanted.test_accuracy)} to "
        f"{percent(finetune.finetuned.test_accuracy)}. The paper finds that after fine-tuning the transplanted model "
        "outperforms the individual members of the same size; on this run:"
    )
    verdict = finetune.verdict
    (st.success if verdict.beats_best_parent else st.info)(verdict.explanation())
    show_chart(
        comparison_figure([*parents.scores, concatenation.ensemble, pruning.transplanted, finetune.finetuned]),
        "nt-demo-finetune",
    )

baselines = story.baselines
if concatenation is not None and finetune is not None and baselines is not None:
    st.subheader(f"5. {STEP_TITLES[4]}")
    pairs = story.method_pairs()
    before = ", ".join(f"{METHOD_LABELS[p.method]} {percent(p.fused.test_accuracy)}" for p in pairs)
    after = ", ".join(f"{METHOD_LABELS[p.method]} {percent(p.finetuned.test_accuracy)}" for p in pairs)
    top = max(p.finetuned.test_accuracy for p in pairs)
    best = " and ".join(METHOD_LABELS[p.method] for p in pairs if p.finetuned.test_accuracy == top)
    st.markdown(
        "The same parents fused by OT fusion (Singh & Jaggi 2020: align neurons by optimal transport, then average) "
        "and by vanilla averaging (no alignment), each fine-tuned with the same recipe. Averaging unaligned networks "
        "mixes unrelated neurons, alignment typically saves much of the function, and NT needs no alignment: it keeps "
        f"whole neurons. Before fine-tuning: {before}. After: {after}; best after fine-tuning: {best} "
        f"({percent(top)}), against the best parent's {percent(parents.best.test_accuracy)}."
    )
    bars = [
        {
            "method": METHOD_LABELS[p.method],
            "test_accuracy": p.fused.test_accuracy,
            "finetuned_accuracy": p.finetuned.test_accuracy,
        }
        for p in pairs
    ]
    references = [
        ("best parent", parents.best.role, parents.best.test_accuracy),
        ("ensemble", "ensemble", concatenation.ensemble.test_accuracy),
    ]
    show_chart(finetune_comparison_figure(bars, references), "nt-demo-baselines")

lines = story_commands(story)
if lines:
    st.caption("Every model of the story so far from the command line:")
    show_command("\n".join(lines))

if story.finished:
    st.success(f"The story is complete: {story.seconds:.1f} s of computation end to end. Restart to tell it again.")
else:
    st.info(f"Next, step {story.steps_done + 1}: {STEP_TITLES[story.steps_done].lower()}.")
