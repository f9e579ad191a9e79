"""A sweep file and the jobs it expands into.

A sweep file (TOML or JSON) names the methods, the options to grid over, the seeds, the parents, the analyses and
where the jobs run::

    name = "demo-methods"
    methods = ["ot", "matching", "average"]
    seeds = [0, 1]
    # max_jobs = 5000         # optional: a sweep of more jobs is refused (default DEFAULT_MAX_JOBS, 1000)

    [parents]                 # trained by the sweep: `models` networks per seed ...
    arch = "mlp"
    dataset = "digits"
    models = 2
    epochs = 30               # ... with this recipe (every TrainConfig field but the seed)
    # or parents given by id, fused once per seed:  parents = [["mlp-a", "mlp-b"]]

    [options.ot]
    mode = ["weights", "activations"]   # a list is an axis of the grid

    [finetune]                # optional: fine-tune every fused network (TrainConfig fields but the seed)
    epochs = 2
    [hessian]                 # optional: HessianConfig fields, for the parents and every fused/fine-tuned network
    samples = 300
    [landscape]               # optional: LandscapeConfig fields, the fusion landscape of every two-parent fusion
    resolution = 11
    [executor]                # where the jobs run: submitit's local executor (default) or SLURM
    cluster = "local"

Seeds. With a ``[parents]`` recipe, seed ``s`` trains its own ``models`` parents with the training seeds ``s * models
+ k`` (so seeds 0 and 1 of a pair are the networks trained with seeds 0, 1 and 2, 3, as the demo ensemble's), and a
stored network trained with the same spec, data and recipe is reused (:mod:`fusion.run_key`). The seed is also the
fusion's own ``seed`` option where the method has one and the seed of the fine-tune. The Hessian and landscape
settings are used as written, so one parent's analysis serves every job.

Size. A sweep of more than ``max_jobs`` jobs (:data:`DEFAULT_MAX_JOBS` unless the file or ``--max-jobs`` raises it)
is refused before anything is expanded: its job count is the product of its sizes (:meth:`SweepSpec.job_counts`), so
a mistyped grid of millions of points costs nothing to refuse.

Every job has an id that hashes its content, so a job whose stored outcome is ``done`` is skipped when the sweep runs
again (resume), and changing a setting makes new jobs while the models they share are reused.
"""

from __future__ import annotations

import itertools
import json
import math
import re
import tomllib
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Literal

from analysis.hessian_config import HessianConfig
from analysis.landscape import LandscapeConfig
from fusion.data import load_dataset
from fusion.errors import ConfigError
from fusion.models import ModelSpec, default_spec
from fusion.records import Record
from fusion.registry import REGISTRY, resolve
from fusion.run_key import run_key
from fusion.seeds import check_seed
from fusion.train import TrainConfig
from fusion.workspace import slug
from studies.pipeline import train_key

NAME_PATTERN = re.compile(r"^[a-z0-9][a-z0-9-]{0,63}$")
CLUSTERS = ("local", "slurm")
SWEEP_KEYS = (
    "name",
    "methods",
    "seeds",
    "parents",
    "options",
    "finetune",
    "hessian",
    "landscape",
    "executor",
    "max_jobs",
)
DEFAULT_MAX_JOBS = 1000
"""The most jobs (parents and fusions) a sweep may expand into unless its ``max_jobs`` says more."""
RECIPE_KEYS = ("arch", "dataset", "models", "spec")

EXAMPLE_SWEEP = """\
# Three methods on the demo ensemble's MLP pairs: seed 0 fuses the MLPs trained with
# seeds 0 and 1, seed 1 those of seeds 2 and 3 (reused when the demo ensemble is built).
name = "demo-methods"
methods = ["ot", "matching", "average"]
seeds = [0, 1]

[parents]
arch = "mlp"
dataset = "digits"
models = 2
epochs = 30
lr = 0.001
batch_size = 64

# [options.ot]
# mode = ["weights", "activations"]   # a list is an axis of the grid
# [finetune]
# epochs = 2
# [hessian]
# samples = 300
# top_k = 3

[executor]
cluster = "local"
parallel = 2
"""
"""The Sweeps page's example: the demo ensemble's MLP pairs fused by three methods (a test runs it)."""


@dataclass(frozen=True)
class ExecutorConfig(Record):
    """Where and how the jobs run. ``local``: submitit's local executor, one process per job, at most ``parallel`` at
    once. ``slurm``: one SLURM job array, at most ``parallel`` array tasks at once, with ``partition``,
    ``gpus_per_node`` (unset: 1 when this machine has CUDA, else 0 on ``local``; 0 on ``slurm``),
    ``cpus_per_task``, ``mem_gb`` and any other ``sbatch`` option in ``slurm`` (``{"account": "..."}``)."""

    cluster: Literal["local", "slurm"] = "local"
    parallel: int = 2
    timeout_min: int = 60
    gpus_per_node: int | None = None
    cpus_per_task: int | None = None
    mem_gb: int | None = None
    partition: str | None = None
    slurm: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.cluster not in CLUSTERS:
            raise ConfigError(f"executor cluster must be one of {', '.join(CLUSTERS)}, got {self.cluster!r}")
        for name in ("parallel", "timeout_min"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"executor {name} must be a positive integer, got {value!r}")
        for name in ("gpus_per_node", "cpus_per_task", "mem_gb"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 0):
                raise ConfigError(f"executor {name} must be a non-negative integer, got {value!r}")


@dataclass(frozen=True)
class ParentRecipe(Record):
    """Parents the sweep trains: ``models`` networks of ``arch`` per seed (the zoo's default spec for ``dataset`` with
    the ``spec`` overrides, :func:`fusion.models.default_spec`), trained with ``train`` and the seeds of
    :meth:`training_seeds`."""

    arch: str
    dataset: str = "digits"
    models: int = 2
    spec: dict[str, Any] = field(default_factory=dict)
    train: TrainConfig = TrainConfig()

    def __post_init__(self) -> None:
        if isinstance(self.models, bool) or not isinstance(self.models, int) or not 1 <= self.models <= 16:
            raise ConfigError(f"parents models must be an integer from 1 to 16, got {self.models!r}")

    def model_spec(self) -> ModelSpec:
        data = load_dataset(self.dataset)
        return default_spec(self.arch, data.input_shape, data.num_classes, **self.spec)

    def training_seeds(self, seed: int) -> tuple[int, ...]:
        """The training seeds of seed ``seed``'s parents: ``seed * models + k``."""
        return tuple(seed * self.models + k for k in range(self.models))

    def config(self, training_seed: int) -> TrainConfig:
        return replace(self.train, seed=training_seed)


@dataclass(frozen=True)
class SweepSpec(Record):
    """A whole sweep: see the module docstring. Exactly one of ``parents`` (a recipe) and ``parent_ids`` (groups of
    workspace ids) is given."""

    name: str
    methods: tuple[str, ...]
    seeds: tuple[int, ...] = (0,)
    parents: ParentRecipe | None = None
    parent_ids: tuple[tuple[str, ...], ...] = ()
    options: dict[str, dict[str, Any]] = field(default_factory=dict)
    finetune: TrainConfig | None = None
    hessian: HessianConfig | None = None
    landscape: LandscapeConfig | None = None
    executor: ExecutorConfig = ExecutorConfig()
    max_jobs: int = DEFAULT_MAX_JOBS

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not NAME_PATTERN.fullmatch(self.name):
            raise ConfigError(
                f"a sweep name is 1 to 64 lower-case letters, digits and dashes, starting with a letter or digit, got "
                f"{self.name!r}"
            )
        if not self.methods:
            raise ConfigError("a sweep needs at least one method")
        unknown = [m for m in self.methods if m not in REGISTRY]
        if unknown:
            raise ConfigError(f"unknown method(s) {', '.join(unknown)}; the methods are {', '.join(REGISTRY)}")
        if not self.seeds:
            raise ConfigError("a sweep needs at least one seed")
        for seed in self.seeds:
            check_seed(seed, "a sweep seed")
        if len(set(self.seeds)) != len(self.seeds):
            raise ConfigError(f"the seeds repeat: {list(self.seeds)}")
        if (self.parents is None) == (not self.parent_ids):
            raise ConfigError("give the parents either as a training recipe ([parents] arch = ...) or as id groups")
        for group in self.parent_ids:
            if not group or len(set(group)) != len(group):
                raise ConfigError(f"a parent group needs distinct model ids, got {list(group)}")
        extra = sorted(set(self.options) - set(self.methods))
        if extra:
            raise ConfigError(f"options for {', '.join(extra)}, which the sweep does not run")
        self.check_size()
        for method in self.methods:
            for options in option_grid(method, self.options.get(method, {}), self.seeds[0]):
                resolve(method, options)

    def job_counts(self) -> tuple[int, int]:
        """How many parent and fusion jobs the sweep expands into, as products of its sizes, without expanding it:
        per method, grid points x parent groups x seeds, except that with parents given by id a method with no seed
        option and no fine-tune counts each group once (its jobs are the same for every seed). An option list that
        repeats a value, or a parent group given twice, makes the fusion count an upper bound (repeated jobs appear
        once)."""
        if self.parents is not None:
            parents, groups = len(self.seeds) * self.parents.models, 1
        else:
            parents = 0 if self.hessian is None else len({i for group in self.parent_ids for i in group})
            groups = len(self.parent_ids)
        fusions = 0
        for method in self.methods:
            points = math.prod(len(values) for values in option_axes(method, self.options.get(method, {})).values())
            seeded = self.parents is not None or self.finetune is not None or has_seed_option(method)
            fusions += points * groups * (len(self.seeds) if seeded else 1)
        return parents, fusions

    def check_size(self) -> None:
        """Refuse a sweep of more than ``max_jobs`` jobs, with its count and how to raise the limit."""
        if isinstance(self.max_jobs, bool) or not isinstance(self.max_jobs, int) or self.max_jobs < 1:
            raise ConfigError(f"max_jobs must be a positive integer, got {self.max_jobs!r}")
        parents, fusions = self.job_counts()
        if parents + fusions > self.max_jobs:
            raise ConfigError(
                f"sweep {self.name} expands into {parents + fusions:,} jobs ({parents:,} parent, {fusions:,} fusion), "
                f"more than its limit of {self.max_jobs:,}: shorten its option lists or seeds, or raise the limit with "
                f"max_jobs = {parents + fusions} in the sweep file (or --max-jobs {parents + fusions} on the command "
                "line)"
            )

    def local(self) -> SweepSpec:
        """This sweep on submitit's local executor (the app runs sweeps on its own machine)."""
        return replace(self, executor=replace(self.executor, cluster="local"))

    def parent_jobs(self) -> list[ParentJob]:
        """One job per parent network: trained by the recipe, or (given by id) only analysed when a Hessian is asked;
        each parent once, however many seeds or methods use it."""
        if self.parents is not None:
            spec = self.parents.model_spec()
            return [
                ParentJob.make(self.parents, spec, training_seed, self.hessian)
                for seed in self.seeds
                for training_seed in self.parents.training_seeds(seed)
            ]
        if self.hessian is None:
            return []
        ids = dict.fromkeys(i for group in self.parent_ids for i in group)
        return [ParentJob.make_for(model_id, self.hessian) for model_id in ids]

    def fusion_jobs(self) -> list[FusionJob]:
        """One job per parent group, method, grid point of its options and seed, in that order; jobs that would run
        the very same calls (a method without a seed, nothing seeded after it) appear once."""
        groups: list[tuple[int, tuple[str, ...]]]
        if self.parents is not None:
            spec = self.parents.model_spec()
            groups = [
                (
                    seed,
                    tuple(
                        ParentJob.make(self.parents, spec, t, self.hessian).id
                        for t in self.parents.training_seeds(seed)
                    ),
                )
                for seed in self.seeds
            ]
        else:
            groups = [(seed, group) for group in self.parent_ids for seed in self.seeds]
        jobs: dict[str, FusionJob] = {}
        for method in self.methods:
            for seed, group in groups:
                for options in option_grid(method, self.options.get(method, {}), seed):
                    job = FusionJob.make(
                        method,
                        options,
                        seed,
                        group if self.parents is not None else (),
                        () if self.parents is not None else group,
                        None if self.finetune is None else replace(self.finetune, seed=seed),
                        self.hessian,
                        self.landscape,
                    )
                    jobs.setdefault(job.id, job)
        return list(jobs.values())


@dataclass(frozen=True)
class ParentJob(Record):
    """Train one parent by ``recipe`` with ``training_seed`` (or, with ``model``, take that stored network), then its
    Hessian with ``hessian`` when given."""

    id: str
    recipe: ParentRecipe | None = None
    training_seed: int = 0
    model: str | None = None
    hessian: HessianConfig | None = None

    @classmethod
    def make(
        cls, recipe: ParentRecipe, spec: ModelSpec, training_seed: int, hessian: HessianConfig | None
    ) -> ParentJob:
        key = train_key(spec, recipe.dataset, recipe.config(training_seed))
        digest = run_key("sweep-parent", train=key, hessian=None if hessian is None else hessian.to_dict())
        return cls(
            f"train-{slug(recipe.arch, 20)}-seed{training_seed}-{digest[:8]}", recipe, training_seed, None, hessian
        )

    @classmethod
    def make_for(cls, model_id: str, hessian: HessianConfig) -> ParentJob:
        digest = run_key("sweep-parent", model=model_id, hessian=hessian.to_dict())
        return cls(f"hessian-{slug(model_id, 40)}-{digest[:8]}", None, 0, model_id, hessian)

    def train_key(self) -> str:
        assert self.recipe is not None
        return train_key(self.recipe.model_spec(), self.recipe.dataset, self.recipe.config(self.training_seed))


@dataclass(frozen=True)
class FusionJob(Record):
    """Fuse one parent group with ``method`` and full ``options``, then fine-tune with ``finetune``, take the Hessian
    of the fused and fine-tuned networks and the fusion landscape, each when given. The parents are workspace ids
    (``parents``) or the networks of the parent jobs ``parent_jobs``, read from their outcomes when the job runs."""

    id: str
    method: str
    options: dict[str, Any]
    seed: int
    parent_jobs: tuple[str, ...] = ()
    parents: tuple[str, ...] = ()
    finetune: TrainConfig | None = None
    hessian: HessianConfig | None = None
    landscape: LandscapeConfig | None = None

    @classmethod
    def make(
        cls,
        method: str,
        options: dict[str, Any],
        seed: int,
        parent_jobs: tuple[str, ...],
        parents: tuple[str, ...],
        finetune: TrainConfig | None,
        hessian: HessianConfig | None,
        landscape: LandscapeConfig | None,
    ) -> FusionJob:
        seeded = finetune is not None or "seed" in options
        content = {
            "method": method,
            "options": options,
            "parent_jobs": list(parent_jobs),
            "parents": list(parents),
            "seed": seed if seeded else None,
            "finetune": None if finetune is None else finetune.to_dict(),
            "hessian": None if hessian is None else hessian.to_dict(),
            "landscape": None if landscape is None else landscape.to_dict(),
        }
        digest = run_key("sweep-fusion", **content)
        return cls(
            f"{slug(method, 20)}-{f'seed{seed}-' if seeded or parent_jobs else ''}{digest[:8]}",
            method,
            options,
            seed,
            parent_jobs,
            parents,
            finetune,
            hessian,
            landscape,
        )

    @property
    def single(self) -> bool:
        """Whether the method takes one model (pruning): it is applied to the first parent."""
        return resolve(self.method).spec.max_models == 1


def option_grid(method: str, options: Mapping[str, Any], seed: int) -> list[dict[str, Any]]:
    """The grid of ``options``: every list value is an axis (a list of lists for an option that is itself a list),
    and the method's ``seed`` option, when it has one and it is not given, is ``seed``."""
    axes = option_axes(method, options)
    seeded = {"seed": seed} if has_seed_option(method) and "seed" not in options else {}
    return [dict(zip(axes, point)) | seeded for point in itertools.product(*axes.values())]


def option_axes(method: str, options: Mapping[str, Any]) -> dict[str, list[Any]]:
    """The axes of ``options``' grid, each option's list of values (one value for an option that is no axis); the
    grid is their product (:func:`option_grid`)."""
    kind = resolve(method).spec.options
    hints = typing.get_type_hints(kind)
    tuple_valued = {f.name for f in fields(kind) if holds_tuple(hints[f.name])}
    axes = {}
    for name, value in options.items():
        is_axis = isinstance(value, list) and (
            name not in tuple_valued or (bool(value) and all(isinstance(v, list) for v in value))
        )
        if is_axis and not value:
            raise ConfigError(f"{method} option {name}: an empty list of values")
        axes[name] = value if is_axis else [value]
    return axes


def has_seed_option(method: str) -> bool:
    """Whether ``method``'s options have a ``seed`` (the sweep's seed is then the fusion's own)."""
    return "seed" in typing.get_type_hints(resolve(method).spec.options)


def holds_tuple(hint: Any) -> bool:
    """Whether an option's type is a tuple, or a union with one (``tuple[float, ...] | None``)."""
    members = typing.get_args(hint) if typing.get_origin(hint) in (typing.Union, types.UnionType) else (hint,)
    return any(typing.get_origin(m) is tuple or m is tuple for m in members)


def section(kind: type, data: Any, where: str, **fixed: Any) -> Any:
    """``kind(**data)`` for one table of a sweep file; a key the class does not have is refused by name."""
    if not isinstance(data, Mapping):
        raise ConfigError(f"[{where}] must be a table of settings, got {type(data).__name__}")
    known = {f.name for f in fields(kind)} - set(fixed)
    unknown = sorted(set(data) - known)
    if unknown:
        raise ConfigError(f"[{where}] has no setting {', '.join(unknown)}; it takes {', '.join(sorted(known))}")
    values = {k: tuple(v) if isinstance(v, list) and k != "slurm" else v for k, v in data.items()}
    try:
        return kind(**values, **fixed)
    except TypeError as exc:
        raise ConfigError(f"[{where}]: {exc}") from exc


def recipe_from(data: Any) -> ParentRecipe:
    if not isinstance(data, Mapping) or "arch" not in data:
        raise ConfigError("[parents] needs at least arch (and usually dataset, models and the training recipe)")
    training = {k: v for k, v in data.items() if k not in RECIPE_KEYS}
    if "seed" in training:
        raise ConfigError("[parents] takes no seed: the sweep's seeds choose the parents' training seeds")
    train = section(TrainConfig, training, "parents")
    spec = data.get("spec", {})
    if not isinstance(spec, Mapping):
        raise ConfigError("[parents] spec must be a table of architecture settings")
    return ParentRecipe(str(data["arch"]), str(data.get("dataset", "digits")), data.get("models", 2), dict(spec), train)


def sweep_from(data: Any, max_jobs: int | None = None) -> SweepSpec:
    """A :class:`SweepSpec` from a sweep file's contents (see the module docstring); ``max_jobs``, when given, is the
    job limit instead of the file's ``max_jobs``."""
    if not isinstance(data, Mapping):
        raise ConfigError("a sweep file holds one table of settings")
    unknown = sorted(set(data) - set(SWEEP_KEYS))
    if unknown:
        raise ConfigError(f"a sweep has no setting {', '.join(unknown)}; it takes {', '.join(SWEEP_KEYS)}")
    for key in ("name", "methods", "parents"):
        if key not in data:
            raise ConfigError(f"a sweep file needs {key}")
    methods, seeds, parents = data["methods"], data.get("seeds", [0]), data["parents"]
    if not isinstance(methods, list) or not all(isinstance(m, str) for m in methods):
        raise ConfigError("methods must be a list of method names")
    if not isinstance(seeds, list):
        raise ConfigError("seeds must be a list of integers")
    recipe, ids = None, ()
    if isinstance(parents, Mapping):
        recipe = recipe_from(parents)
    elif isinstance(parents, list) and all(isinstance(g, list) and all(isinstance(i, str) for i in g) for g in parents):
        ids = tuple(tuple(group) for group in parents)
    else:
        raise ConfigError("parents must be a training recipe ([parents] arch = ...) or a list of lists of model ids")
    options = data.get("options", {})
    if not isinstance(options, Mapping) or not all(isinstance(v, Mapping) for v in options.values()):
        raise ConfigError("[options] holds one table per method: [options.ot] mode = [...]")
    finetune = data.get("finetune")
    if isinstance(finetune, Mapping) and "seed" in finetune:
        raise ConfigError("[finetune] takes no seed: every job fine-tunes with its own seed")
    return SweepSpec(
        name=data["name"],
        methods=tuple(methods),
        seeds=tuple(seeds),
        parents=recipe,
        parent_ids=ids,
        options={m: dict(o) for m, o in options.items()},
        finetune=None if finetune is None else section(TrainConfig, finetune, "finetune"),
        hessian=None if data.get("hessian") is None else section(HessianConfig, data["hessian"], "hessian"),
        landscape=None if data.get("landscape") is None else section(LandscapeConfig, data["landscape"], "landscape"),
        executor=section(ExecutorConfig, data.get("executor", {}), "executor"),
        max_jobs=data.get("max_jobs", DEFAULT_MAX_JOBS) if max_jobs is None else max_jobs,
    )


def parse_sweep(text: str, format: Literal["toml", "json"] = "toml", max_jobs: int | None = None) -> SweepSpec:
    """A sweep from the text of a TOML or JSON sweep file (``max_jobs``: see :func:`sweep_from`); a syntax error is a
    :class:`ConfigError` with its line."""
    try:
        data = tomllib.loads(text) if format == "toml" else json.loads(text)
    except (tomllib.TOMLDecodeError, json.JSONDecodeError) as exc:
        raise ConfigError(f"the sweep file is not valid {format.upper()}: {exc}") from exc
    return sweep_from(data, max_jobs)


def load_sweep(path: str | Path, max_jobs: int | None = None) -> SweepSpec:
    """The sweep of a ``.toml`` or ``.json`` file (``max_jobs``: see :func:`sweep_from`)."""
    path = Path(path)
    if path.suffix not in (".toml", ".json"):
        raise ConfigError(f"{path}: a sweep file ends in .toml or .json")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read the sweep file {path}: {exc}") from exc
    return parse_sweep(text, "toml" if path.suffix == ".toml" else "json", max_jobs)
