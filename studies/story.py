"""The story of Neuron Transplantation (Öz et al., "Model Fusion via Neuron Transplantation", ECML PKDD 2024) told on
the offline demo ensemble, one step at a time.

1. **parents** — K demo networks of one architecture (trained first if the workspace lacks them), their test accuracy;
2. **concatenation** — the wide model that stacks the K networks' neurons computes the ensemble's mean logits
   ``(1/K) sum_k f_k(x)`` exactly;
3. **pruning** — keeping the largest neurons per group brings it back to one network's width and costs accuracy;
4. **fine-tune** — a short fine-tune recovers, and is judged against the best parent on this run's test set;
5. **baselines** — OT fusion and vanilla averaging of the same parents, before and after the same fine-tune.

Each step returns a frozen dataclass: the first is a function of the workspace and the :class:`StoryOptions`, every
later one of the workspace and the :class:`Story` so far. :func:`advance_story` runs the next step, :func:`run_story`
all of them. The transplanted, fused and fine-tuned models are saved with their provenance, and from step 4 on the
story is stored as the ``story`` result of the fine-tuned transplanted model, so :func:`load_story` finds the finished
story after a reload.
"""

from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
import torch.nn.functional as F

from analysis.norms import GroupNorms, neuron_norms
from fusion.command_lines import fusion_command_lines, train_command
from fusion.data import load_dataset
from fusion.errors import ConfigError
from fusion.groups import neuron_groups
from fusion.methods.average import Ensemble
from fusion.methods.base import Survival
from fusion.methods.transplant import NT_FINETUNE, concatenate
from fusion.models import parameter_count
from fusion.problems import Checked, Checks
from fusion.progress import Progress, no_progress
from fusion.records import Record
from fusion.results import ResultRecord
from fusion.surgery import group_sizes
from fusion.train import TrainConfig, predict_logits
from fusion.workspace import Workspace
from studies.pipeline import (
    DemoMember,
    build_demo_ensemble,
    demo_members,
    finetune_and_save,
    fuse_and_save,
    parent_role,
)
from studies.scores import Score

STORY_RESULT = "story"
STEP_TITLES = (
    "The parents",
    "The concatenated model is the ensemble",
    "Pruning sacrifices the small neurons",
    "A short fine-tune recovers",
    "OT fusion and vanilla averaging beside it",
)
BASELINES = ("ot", "average")


def finetune_title(pruned_accuracy: float, finetuned_accuracy: float) -> str:
    """Step 4's title from its outcome: whether the fine-tune won back accuracy the pruning lost."""
    gain = 100 * (finetuned_accuracy - pruned_accuracy)
    if gain > 0:
        return f"A short fine-tune recovers {gain:.2f} points"
    return "A short fine-tune does not recover" + (" (no change)" if gain == 0 else f" ({gain:.2f} points)")


@dataclass(frozen=True)
class StoryOptions(Record, Checked):
    """Which parents the story fuses and how every fused model is fine-tuned.

    The default fine-tune is the reference implementation's (:data:`fusion.methods.transplant.NT_FINETUNE`: 30 epochs
    of SGD, lr 0.01, momentum 0.9), with batches of 64 and a cosine schedule instead of a constant rate.
    """

    arch: Literal["cnn", "mlp"] = field(
        default="cnn", metadata={"help": "the demo CNNs (16-32 channels) or MLPs (128-64)"}
    )
    parents: int = field(default=2, metadata={"help": "how many demo networks to fuse (K, 2 to 4)"})
    finetune_epochs: int = field(
        default=NT_FINETUNE.epochs, metadata={"help": "fine-tune epochs for every fused model"}
    )
    finetune_lr: float = field(default=NT_FINETUNE.lr, metadata={"help": "fine-tune learning rate"})
    finetune_optimizer: Literal["sgd", "adam"] = field(
        default=NT_FINETUNE.optimizer, metadata={"help": "fine-tune optimizer (SGD with momentum 0.9)"}
    )
    seed: int = field(default=0, metadata={"help": "seed of the fine-tune's mini-batch order"})

    def check(self, checks: Checks) -> None:
        checks.choice("arch", self.arch, ("cnn", "mlp"))
        checks.whole("parents", self.parents, 2, 4)
        checks.nested(
            self.finetune_config,
            {"epochs": "finetune_epochs", "lr": "finetune_lr", "optimizer": "finetune_optimizer"},
        )

    def finetune_config(self) -> TrainConfig:
        """The fine-tune recipe as a :class:`TrainConfig` (raises ConfigError for out-of-range values)."""
        return TrainConfig(
            epochs=self.finetune_epochs, lr=self.finetune_lr, optimizer=self.finetune_optimizer, seed=self.seed
        )

    def members(self) -> list[DemoMember]:
        """The demo members the story fuses: seeds 0..K-1 of the chosen architecture."""
        return [m for m in demo_members(mlps=self.parents, cnns=self.parents) if m.spec.arch == self.arch]


@dataclass(frozen=True)
class ParentsStep(Record):
    """The K parents with their stored test metrics; ``trained`` lists the ids trained by this step."""

    scores: tuple[Score, ...]
    trained: tuple[str, ...]
    test_size: int
    seconds: float

    @property
    def ids(self) -> list[str]:
        return [s.id for s in self.scores if s.id is not None]

    @property
    def best(self) -> Score:
        return max(self.scores, key=lambda s: s.test_accuracy)


@dataclass(frozen=True)
class ConcatenationStep(Record):
    """The wide model against the prediction ensemble on the test split.

    ``max_logit_difference`` is ``max |wide(x) - (1/K) sum_k f_k(x)|`` over every test image and class;
    ``disagreements`` counts the test images whose predicted class differs. ``parent_widths`` and ``wide_widths`` give
    every neuron group's width in one parent and in the wide model (K times as many).
    """

    ensemble: Score
    wide: Score
    max_logit_difference: float
    disagreements: int
    parent_widths: dict[str, int]
    wide_widths: dict[str, int]
    seconds: float


@dataclass(frozen=True)
class PruningStep(Record):
    """Neuron Transplantation without its fine-tune: the transplanted model, its accuracy drop from the ensemble (a
    fraction), per group which concatenated neurons survived, and the neuron norms of the parents and of the
    transplanted model (keyed by role)."""

    transplanted: Score
    accuracy_drop: float
    survival: tuple[Survival, ...]
    norms: dict[str, list[GroupNorms]]
    seconds: float


@dataclass(frozen=True)
class Verdict(Record):
    """The fine-tuned transplanted model against the best parent and the ensemble, counted in test images."""

    finetuned_accuracy: float
    best_parent_accuracy: float
    ensemble_accuracy: float
    test_size: int

    @property
    def images_ahead(self) -> int:
        """Test images the fine-tuned model classifies correctly beyond the best parent (negative: behind)."""
        return round((self.finetuned_accuracy - self.best_parent_accuracy) * self.test_size)

    @property
    def ensemble_images_ahead(self) -> int:
        return round((self.ensemble_accuracy - self.best_parent_accuracy) * self.test_size)

    @property
    def sampling_error(self) -> float:
        """The test set's sampling error at the best parent's accuracy ``p``: the binomial standard error
        ``sqrt(p (1 - p) / n)`` (a fraction; 0.0066 at 98 % on 450 images)."""
        p = self.best_parent_accuracy
        return math.sqrt(max(p * (1 - p), 0.0) / self.test_size)

    @property
    def beats_best_parent(self) -> bool:
        """Ahead by more than :data:`SIGNIFICANT` sampling errors; a smaller lead is within the test set's noise."""
        margin = self.finetuned_accuracy - self.best_parent_accuracy
        return self.images_ahead > 0 and margin > SIGNIFICANT * max(self.sampling_error, 0.5 / self.test_size)

    def explanation(self) -> str:
        """The outcome of this run in two sentences: the margin against the test set's sampling error, and the
        reason when the best parent was not beaten."""
        point = 100 / self.test_size
        error = 100 * self.sampling_error
        head = (
            f"Fine-tuned NT {100 * self.finetuned_accuracy:.2f}% vs best parent "
            f"{100 * self.best_parent_accuracy:.2f}%: "
        )
        ahead = self.images_ahead
        margin = f"{images(abs(ahead))} ({abs(ahead) * point:.2f} points)"
        if self.beats_best_parent:
            return head + (
                f"{margin} ahead, more than {SIGNIFICANT:g} times the test set's sampling error of "
                f"±{error:.2f} points, so the transplanted model beats every parent, as the paper reports (the "
                f"ensemble: "
                f"{100 * self.ensemble_accuracy:.2f}%)."
            )
        if ahead > 0:
            return head + (
                f"{margin} ahead, within the test set's sampling error of ±{error:.2f} points ({self.test_size} "
                f"images): on par with the best parent, not a measurable win (the ensemble: "
                f"{100 * self.ensemble_accuracy:.2f}%)."
            )
        head += "a tie, the same number of test images right. " if ahead == 0 else f"{images(-ahead)} behind. "
        if self.ensemble_images_ahead <= 0:
            return head + (
                f"On this small test set ({self.test_size} images, 1 image = {point:.2f} points) the ensemble itself "
                f"({100 * self.ensemble_accuracy:.2f}%) does not beat the best parent, so NT, which starts from the "
                "ensemble's largest neurons, cannot be expected to."
            )
        return head + (
            f"The ensemble ({100 * self.ensemble_accuracy:.2f}%) is {images(self.ensemble_images_ahead)} ahead of the "
            f"best parent (1 image = {point:.2f} points), so there was something to gain; this short fine-tune did not "
            "recover it on this run."
        )


SIGNIFICANT = 2.0
"""A lead counts as beating the best parent above this many sampling errors (about a 95 % two-sided interval)."""


def images(count: int) -> str:
    return f"{count} test image" + ("" if count == 1 else "s")


@dataclass(frozen=True)
class FinetuneStep(Record):
    """The transplanted model after the story's fine-tune, the recipe used and the verdict against the parents."""

    finetuned: Score
    config: dict[str, Any]
    verdict: Verdict
    seconds: float


@dataclass(frozen=True)
class FusedPair(Record):
    """One fusion method's model before and after the story's fine-tune."""

    method: str
    fused: Score
    finetuned: Score


@dataclass(frozen=True)
class BaselinesStep(Record):
    """OT fusion and vanilla averaging of the same parents, each before and after the same fine-tune."""

    pairs: tuple[FusedPair, ...]
    seconds: float


@dataclass(frozen=True)
class Story(Record):
    """The steps done so far (``None`` for those still to come) and the options they ran with."""

    options: StoryOptions = StoryOptions()
    parents: ParentsStep | None = None
    concatenation: ConcatenationStep | None = None
    pruning: PruningStep | None = None
    finetune: FinetuneStep | None = None
    baselines: BaselinesStep | None = None

    @property
    def steps_done(self) -> int:
        steps = (self.parents, self.concatenation, self.pruning, self.finetune, self.baselines)
        return next((i for i, step in enumerate(steps) if step is None), len(steps))

    @property
    def finished(self) -> bool:
        return self.steps_done == len(STEP_TITLES)

    @property
    def seconds(self) -> float:
        """Wall time of the steps done, in seconds."""
        steps = (self.parents, self.concatenation, self.pruning, self.finetune, self.baselines)
        return sum(step.seconds for step in steps if step is not None)

    def method_pairs(self) -> list[FusedPair]:
        """Neuron Transplantation and, once run, the baselines, each before and after the fine-tune."""
        pairs = []
        if self.pruning is not None and self.finetune is not None:
            pairs.append(FusedPair("transplant", self.pruning.transplanted, self.finetune.finetuned))
        return pairs + list(self.baselines.pairs if self.baselines is not None else ())


def require(step: Any, name: str) -> Any:
    if step is None:
        raise ConfigError(f"the story has no {name} step yet: run the steps in order")
    return step


def parents_step(
    workspace: Workspace, options: StoryOptions, device: torch.device | None = None, progress: Progress = no_progress
) -> ParentsStep:
    """Find the demo members of ``options`` in the workspace (same architecture, dataset and training recipe),
    train those that are missing with :func:`studies.pipeline.build_demo_ensemble`, and report their test metrics."""
    started = time.perf_counter()
    stored = build_demo_ensemble(workspace, options.members(), device=device, progress=progress)
    progress(1, 1, f"{len(stored)} demo {options.arch} parents ready")
    return ParentsStep(
        tuple(Score.of(s.record, parent_role(k)) for k, s in enumerate(stored)),
        tuple(s.record.id for s in stored if not s.reused),
        len(load_dataset("digits").y_test),
        time.perf_counter() - started,
    )


def concatenation_step(
    workspace: Workspace, story: Story, device: torch.device | None = None, progress: Progress = no_progress
) -> ConcatenationStep:
    """Concatenate the parents (:func:`fusion.methods.transplant.concatenate`) and compare the wide model's logits
    with the mean of the parents' logits on every test image."""
    started = time.perf_counter()
    parents = require(story.parents, "parents")
    models = [workspace.load(i)[0] for i in parents.ids]
    data = load_dataset("digits")
    x, y = data.split("test")
    groups = neuron_groups(models[0], data.x_train[:2])
    wide = concatenate(models, groups)
    progress(1, 3, "concatenated the parents into one wide model")
    wide_logits = predict_logits(wide, x, device)
    ensemble_logits = predict_logits(Ensemble(models), x, device)
    progress(2, 3, "evaluated the wide model and the ensemble")

    def score(name: str, logits: torch.Tensor, parameters: int) -> Score:
        loss = float(F.cross_entropy(logits, y))
        return Score(name, "ensemble", None, float((logits.argmax(1) == y).float().mean()), loss, parameters)

    result = ConcatenationStep(
        ensemble=score(f"ensemble of {len(models)}", ensemble_logits, sum(parameter_count(m) for m in models)),
        wide=score(f"concatenated ({len(models)}x wide)", wide_logits, parameter_count(wide)),
        max_logit_difference=float((wide_logits - ensemble_logits).abs().max()),
        disagreements=int((wide_logits.argmax(1) != ensemble_logits.argmax(1)).sum()),
        parent_widths=group_sizes(models[0].state_dict(), groups),
        wide_widths=group_sizes(wide.state_dict(), groups),
        seconds=time.perf_counter() - started,
    )
    progress(3, 3, f"max |wide - ensemble| logit difference {result.max_logit_difference:.1e}")
    return result


def pruning_step(
    workspace: Workspace, story: Story, device: torch.device | None = None, progress: Progress = no_progress
) -> PruningStep:
    """Neuron Transplantation of the parents (``fuse(..., "transplant")``, saved with its provenance), its accuracy
    drop from the ensemble, the survival table of every group and the neuron norms of parents and result."""
    started = time.perf_counter()
    parents = require(story.parents, "parents")
    concatenation = require(story.concatenation, "concatenation")
    run = fuse_and_save(
        workspace,
        parents.ids,
        "transplant",
        name=f"demo story · NT of {len(parents.ids)} {story.options.arch}",
        device=device,
        progress=progress,
    )
    assert run.record is not None
    transplanted = Score.of(run.record, "fused")
    example = load_dataset("digits").x_test[:2]
    norms = {s.role: neuron_norms(workspace.load(s.id)[0], example) for s in parents.scores if s.id is not None}
    norms["fused"] = neuron_norms(workspace.load(run.record.id)[0], example)
    return PruningStep(
        transplanted,
        concatenation.ensemble.test_accuracy - transplanted.test_accuracy,
        tuple(run.report.survival()),
        norms,
        time.perf_counter() - started,
    )


def finetune_step(
    workspace: Workspace, story: Story, device: torch.device | None = None, progress: Progress = no_progress
) -> FinetuneStep:
    """Fine-tune the transplanted model with the story's recipe (saved as a new model) and judge it against the best
    parent and the ensemble."""
    started = time.perf_counter()
    parents = require(story.parents, "parents")
    concatenation = require(story.concatenation, "concatenation")
    pruning = require(story.pruning, "pruning")
    config = story.options.finetune_config()
    assert pruning.transplanted.id is not None
    record = finetune_and_save(workspace, pruning.transplanted.id, config, device=device, progress=progress).record
    finetuned = Score.of(record, "fine-tuned")
    verdict = Verdict(
        finetuned.test_accuracy, parents.best.test_accuracy, concatenation.ensemble.test_accuracy, parents.test_size
    )
    return FinetuneStep(finetuned, config.to_dict(), verdict, time.perf_counter() - started)


def baselines_step(
    workspace: Workspace, story: Story, device: torch.device | None = None, progress: Progress = no_progress
) -> BaselinesStep:
    """OT fusion and vanilla averaging of the parents (saved), each fine-tuned with the story's recipe (saved)."""
    started = time.perf_counter()
    parents = require(story.parents, "parents")
    config = story.options.finetune_config()
    total = len(BASELINES) * (config.epochs + 1)
    pairs = []
    for index, method in enumerate(BASELINES):
        offset = index * (config.epochs + 1)
        run = fuse_and_save(
            workspace,
            parents.ids,
            method,
            name=f"demo story · {method} of {len(parents.ids)} {story.options.arch}",
            device=device,
        )
        assert run.record is not None
        progress(offset + 1, total, f"{method}: fused")

        def report(done: int, _: int, message: str, offset: int = offset + 1, method: str = method) -> None:
            progress(offset + done, total, f"{method} fine-tune: {message}")

        tuned = finetune_and_save(
            workspace, run.record.id, config, device=device, progress=report, model=run.model
        ).record
        pairs.append(FusedPair(method, Score.of(run.record, "fused"), Score.of(tuned, "fine-tuned")))
    return BaselinesStep(tuple(pairs), time.perf_counter() - started)


def story_commands(story: Story) -> list[str]:
    """The command lines that rebuild every model the story has stored so far: each parent (``train``), the
    transplanted model and its fine-tune, and the baselines with theirs. The concatenated wide model is held in
    memory only and has none."""
    lines: list[str] = []
    parents = story.parents
    if parents is None:
        return lines
    for member in story.options.members():
        line = train_command(member.spec, "digits", member.config)
        if line is not None:
            lines.append(line)
    recipe = story.options.finetune_config().to_dict()
    if story.pruning is not None and story.pruning.transplanted.id is not None:
        tuned = recipe if story.finetune is not None else None
        lines += fusion_command_lines("transplant", parents.ids, {}, tuned, story.pruning.transplanted.id)
    for pair in story.baselines.pairs if story.baselines is not None else ():
        lines += fusion_command_lines(pair.method, parents.ids, {}, recipe, pair.fused.id or "FUSED_ID")
    return lines


LATER_STEPS = (
    ("concatenation", concatenation_step),
    ("pruning", pruning_step),
    ("finetune", finetune_step),
    ("baselines", baselines_step),
)


def advance_story(
    workspace: Workspace, story: Story, device: torch.device | None = None, progress: Progress = no_progress
) -> Story:
    """Run the story's next step and return the longer story; from the fine-tune on, it is also stored as the
    ``story`` result of the fine-tuned transplanted model. Raises ConfigError when the story is finished."""
    done = story.steps_done
    if story.finished:
        raise ConfigError("the story is finished; start a new one to run it again")
    if done == 0:
        return dataclasses.replace(story, parents=parents_step(workspace, story.options, device, progress))
    name, step = LATER_STEPS[done - 1]
    longer = dataclasses.replace(story, **{name: step(workspace, story, device, progress)})
    if longer.finetune is not None:
        assert longer.finetune.finetuned.id is not None
        owner = longer.finetune.finetuned.id
        workspace.save_result(
            owner, ResultRecord.make(STORY_RESULT, [owner], story.options.to_dict(), longer.to_dict())
        )
    return longer


def run_story(
    workspace: Workspace,
    options: StoryOptions = StoryOptions(),
    device: torch.device | None = None,
    progress: Progress = no_progress,
) -> Story:
    """Every step of the story in order; ``progress`` reports each step's own progress, prefixed with the step."""
    story = Story(options)
    while not story.finished:
        title = STEP_TITLES[story.steps_done]

        def report(done: int, total: int, message: str, title: str = title) -> None:
            progress(done, total, f"{title}: {message}")

        story = advance_story(workspace, story, device, report)
    return story


def load_story(workspace: Workspace) -> Story | None:
    """The newest story stored in the workspace (with its fine-tuned transplanted model), or ``None``."""
    for record in reversed(workspace.records()):
        if record.method == "finetune":
            stored = workspace.results(record.id, STORY_RESULT)
            if stored:
                return Story.from_dict(stored[0].payload)
    return None
