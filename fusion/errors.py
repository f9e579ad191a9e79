"""One exception hierarchy for everything FusionLab refuses.

Library functions validate their inputs at the public boundary and raise a subclass of
:class:`FusionError` whose message says what was expected and what was given. The app
turns these into a message on the page, the command line into a non-zero exit.
"""


class FusionError(Exception):
    """Base class of every error FusionLab raises on purpose: catch it to tell a refused input from a bug.

    Examples
    --------
    >>> from fusion import FusionError, load_dataset
    >>> try:
    ...     load_dataset("imagenet")
    ... except FusionError as refused:
    ...     print(type(refused).__name__, isinstance(refused, ValueError))
    DatasetError True
    """


class ConfigError(FusionError, ValueError):
    """An option is out of range or inconsistent (zero epochs, negative learning rate...). A config that checks all
    of its fields at once lists each refused value in ``problems`` (:mod:`fusion.problems`), so that a form can name
    every one by its label; the message joins them.

    Examples
    --------
    >>> from fusion import ConfigError, TrainConfig
    >>> try:
    ...     TrainConfig(epochs=0, lr=-1)
    ... except ConfigError as refused:
    ...     print([problem.field for problem in refused.problems])
    ...     print(refused.problems[1].text({"lr": "Learning rate"}))
    ['epochs', 'lr']
    Learning rate must be a number above 0 and at most 10, got -1
    """

    problems: tuple = ()


class ArchitectureError(FusionError, ValueError):
    """An architecture spec is invalid, or models do not share the architecture a method needs.

    Examples
    --------
    >>> import torch
    >>> from torch import nn
    >>> from fusion import ArchitectureError, align, neuron_groups
    >>> reference = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))
    >>> try:
    ...     align(nn.Sequential(nn.Linear(4, 3)), reference, neuron_groups(reference, torch.zeros(1, 4)))
    ... except ArchitectureError as refused:
    ...     print(refused)
    the models do not share an architecture: their parameter names differ
    """


class UntrustedFactoryError(ArchitectureError):
    """A ``python:`` factory would run without being trusted on this machine (``FUSIONLAB_FACTORIES``,
    ``--trust-factory``): a stored model or an imported file never vouches for its own code."""


class CheckpointError(FusionError, ValueError):
    """A file is not a checkpoint FusionLab can load safely, or its tensors do not fit.

    Examples
    --------
    >>> import pathlib, tempfile
    >>> from fusion import CheckpointError
    >>> from fusion.workspace import read_checkpoint
    >>> with tempfile.TemporaryDirectory() as folder:
    ...     path = pathlib.Path(folder) / "notes.safetensors"
    ...     _ = path.write_text("not a checkpoint")
    ...     try:
    ...         read_checkpoint(path)
    ...     except CheckpointError as refused:
    ...         print(refused)
    notes.safetensors is not a safetensors or PyTorch checkpoint: it is damaged or in another format
    """


class DatasetError(FusionError, ValueError):
    """A dataset is unknown, missing locally, empty, damaged on disk, or holds non-finite inputs.

    Examples
    --------
    >>> import torch
    >>> from torch import nn
    >>> from fusion import DatasetError, evaluate
    >>> try:
    ...     evaluate(nn.Linear(2, 2), torch.tensor([[float("nan"), 0.0]]), torch.tensor([0]))
    ... except DatasetError as refused:
    ...     print(refused)
    1 of the 1 inputs contain NaN or infinite values
    """


class NonFiniteLoss(FusionError, ValueError):
    """A loss or a model's outputs are NaN or infinite where a finite number is needed (an evaluation, a landscape,
    a Hessian), so no silent NaN reaches a result."""


class MemoryLimitError(ConfigError):
    """A model would not fit in the memory available for it; the message gives the estimate and what is free."""


class UsageError(FusionError):
    """A command line that does not parse: an unknown command or choice, a missing or malformed argument. The
    command line exits with status 2 for it, as argparse does."""


class WorkspaceError(FusionError, KeyError):
    """A workspace entry is missing or cannot be written.

    Examples
    --------
    >>> import tempfile
    >>> from fusion import Workspace, WorkspaceError
    >>> with tempfile.TemporaryDirectory() as folder:
    ...     try:
    ...         Workspace(folder).record("mlp-digits-s0-000000")
    ...     except WorkspaceError as refused:
    ...         print(str(refused).split(" in the workspace")[0])
    no model 'mlp-digits-s0-000000'
    """

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


class OutputFileError(FusionError, ValueError):
    """A file to write at a user's path (an export, a ``--csv``, a sweep's table) is refused: the path is empty, its
    folder is missing or inside the workspace, it is a link or not a regular file, or it exists and may not be
    replaced (:mod:`fusion.user_files`)."""


class DamagedResultError(WorkspaceError):
    """A stored analysis result cannot be read: its file is not UTF-8 JSON holding an object."""


class DamagedModelError(CheckpointError):
    """A model in the workspace cannot be read: its metadata is unreadable, or a file is missing, unreadable or does
    not match the checksum stored when it was saved."""

    def __init__(self, model_id: str, reason: str) -> None:
        super().__init__(f"model {model_id!r}: {reason}")
        self.model_id = model_id
        self.reason = reason

    def __reduce__(self) -> tuple[type, tuple[str, str]]:
        return type(self), (self.model_id, self.reason)


class CostLimitError(ConfigError):
    """A run would need more work, time or memory than its configured limits allow; the message gives the figure
    and the options to lower."""
