"""Which output of a model folder serves each task: the folder's ``tasks.json`` (``layout.TASKS_FILE``).

A model this project trains serves three tasks (:data:`TASKS`): ``subject`` (papers of one subject together:
clustering, "papers like this one"), ``search`` (a title or a short query finding its paper) and ``graded`` (graded
relatedness, recommendation). A folder may compute them with different outputs (:data:`OUTPUTS`), like SPECTER2's
task adapters:

- ``model``: every module of the sentence-transformers folder (``modules.json``), e.g. Transformer -> Pooling ->
  Normalize, or with the subject head Transformer -> Pooling -> Normalize -> Dense -> Normalize;
- ``encoder``: the Transformer and Pooling only, L2-normalized (the encoder without any head);
- ``base``: the model a trained folder keeps in its ``base/`` (``layout.BASE_DIR``, a sentence-transformers
  folder of its own), every module of it: the untouched base model (``train.search_model=base``, search as the
  model started) or a model trained for search (``train.search_model=<folder>``), beside a model trained for
  subjects.

``tasks.json`` maps each task to an output and names the default task::

    {"default": "subject", "tasks": {"subject": "model", "search": "encoder", "graded": "model"}}

A folder without it (the zero-shot base model, a Hub name) is served as :data:`DEFAULT_TASKS` (every task on
``model``). Every embedder's ``encode(texts, output=...)`` computes an output; :func:`read_tasks` is the one reader
of the file, for the API and anything else that serves tasks. Nothing here imports torch.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any

from arxiv_embeddings.layout import BASE_DIR, TASKS_FILE

#: Every module of the folder.
MODEL = "model"
#: The Transformer and the Pooling only, L2-normalized.
ENCODER = "encoder"
#: The model in the folder's ``base/``: the untouched base model, or one trained for search.
BASE = "base"
#: The outputs an embedder computes, and what each is.
OUTPUTS: dict[str, str] = {
    MODEL: "every module of the folder's modules.json",
    ENCODER: "the Transformer and Pooling only, L2-normalized: no head",
    BASE: f"the search model in the folder's {BASE_DIR}/ (the untouched base model, or one trained for search)",
}
#: The tasks a model serves, in the order they are listed.
TASKS = ("subject", "search", "graded")
#: The task a ``tasks.json`` without ``default`` (and a folder without the file) serves by default.
DEFAULT_TASK = "subject"
_EXAMPLE = '{"default": "subject", "tasks": {"subject": "model", "search": "model", "graded": "model"}}'


class TasksFileError(ValueError):
    """A ``tasks.json`` that cannot be read: not JSON, or a value that is not a task or an output."""


class UnknownTaskError(ValueError):
    """A task the model does not serve."""

    def __init__(self, task: str, tasks: TaskMap) -> None:
        self.task = task
        self.valid = tasks.names
        self.message = (
            f"task {task!r} is not served by this model; valid tasks: {', '.join(tasks.names)} ({tasks.origin}). "
            f"Leave the task out for the default task ({tasks.default})."
        )
        super().__init__(self.message)

    def __str__(self) -> str:
        return self.message


def check_output(output: str) -> str:
    """``output`` itself when it is one of :data:`OUTPUTS`, else a :class:`ValueError` listing them."""
    if output not in OUTPUTS:
        valid = ", ".join(f"{name} ({what})" for name, what in OUTPUTS.items())
        raise ValueError(f"Unknown output {output!r}; valid outputs: {valid}.")
    return output


@dataclass(frozen=True)
class TaskMap:
    """The tasks a model serves, each with its output, and the default task. Immutable: share it freely."""

    default: str
    tasks: Mapping[str, str]
    #: The ``tasks.json`` it was read from; None for :data:`DEFAULT_TASKS`.
    source: str | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "tasks", MappingProxyType(dict(self.tasks)))  # a read-only copy

    @property
    def names(self) -> tuple[str, ...]:
        """The task names, in :data:`TASKS` order."""
        return tuple(name for name in TASKS if name in self.tasks)

    @property
    def outputs(self) -> tuple[str, ...]:
        """The outputs some task uses, in :data:`OUTPUTS` order."""
        return tuple(output for output in OUTPUTS if output in self.tasks.values())

    @property
    def origin(self) -> str:
        """Where the map comes from, for messages."""
        return f"from {self.source}" if self.source else f"the default: the model folder has no {TASKS_FILE}"

    def output_of(self, task: str | None) -> str:
        """The output of ``task`` (None = the default task); :class:`UnknownTaskError` for a task not served."""
        return self.resolve(task)[1]

    def resolve(self, task: str | None) -> tuple[str, str]:
        """``(task, output)`` for ``task`` (None = the default task); :class:`UnknownTaskError` if not served."""
        name = self.default if task is None else task
        output = self.tasks.get(name)
        if output is None:
            raise UnknownTaskError(name, self)
        return name, output

    def as_dict(self) -> dict[str, Any]:
        """The map in the shape of ``tasks.json``."""
        return {"default": self.default, "tasks": {name: self.tasks[name] for name in self.names}}


#: How a folder without ``tasks.json`` is served: every task on the whole model.
DEFAULT_TASKS = TaskMap(default=DEFAULT_TASK, tasks=dict.fromkeys(TASKS, MODEL))


def read_tasks(folder: str | os.PathLike[str] | None) -> TaskMap:
    """The :class:`TaskMap` of a model folder: its ``tasks.json``, else :data:`DEFAULT_TASKS` (also for None, a Hub
    name or anything that is not a local folder).

    Raises :class:`TasksFileError` naming the file, the bad value and the valid tasks or outputs when the file is
    not JSON, not ``{"default": <task>, "tasks": {<task>: <output>, ...}}``, names a task not in :data:`TASKS` or
    an output not in :data:`OUTPUTS`, or the ``base`` output of a folder without ``base/``.
    """
    if folder is None or not Path(folder).is_dir():
        return DEFAULT_TASKS
    path = Path(folder) / TASKS_FILE
    if not path.is_file():
        return DEFAULT_TASKS
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as err:
        raise TasksFileError(f"{path} is not readable JSON ({err}); write it as {_EXAMPLE}.") from err
    tasks = parse_tasks(data, str(path))
    if BASE in tasks.outputs and not (Path(folder) / BASE_DIR).is_dir():
        served = ", ".join(task for task in tasks.names if tasks.tasks[task] == BASE)
        raise TasksFileError(
            f"{path} serves {served} with the {BASE!r} output, but {Path(folder) / BASE_DIR} does not exist; copy the "
            f"base model there (a sentence-transformers folder) or map those tasks to {MODEL!r} or {ENCODER!r}."
        )
    return tasks


def tasks_of(name_or_path: str | os.PathLike[str]) -> TaskMap:
    """:func:`read_tasks` of the folder a model name or path resolves to (a folder, a run's folder, a Hub name in
    the Hugging Face cache, the bundled all-MiniLM-L6-v2); :data:`DEFAULT_TASKS` when it resolves to no folder."""
    if Path(name_or_path).is_dir():
        return read_tasks(name_or_path)
    from arxiv_embeddings.backends.loading import model_folder

    return read_tasks(model_folder(str(name_or_path)))


def parse_tasks(data: Any, source: str) -> TaskMap:
    """A :class:`TaskMap` from the parsed content of a ``tasks.json`` (``source`` names it in errors)."""
    if not isinstance(data, dict):
        raise TasksFileError(f"{source} holds {_short(data)}, not an object; write it as {_EXAMPLE}.")
    unknown = sorted(set(data) - {"default", "tasks"})
    if unknown:
        raise TasksFileError(f"{source}: unknown key(s) {unknown}; it has 'default' and 'tasks', e.g. {_EXAMPLE}.")
    tasks = data.get("tasks")
    if not isinstance(tasks, dict) or not tasks:
        raise TasksFileError(
            f"{source}: 'tasks' is {_short(tasks)}; it maps each task ({', '.join(TASKS)}) to an output "
            f"({', '.join(OUTPUTS)}), e.g. {_EXAMPLE}."
        )
    for name, output in tasks.items():
        if name not in TASKS:
            raise TasksFileError(f"{source}: {name!r} is not a task; valid tasks: {', '.join(TASKS)}.")
        if not isinstance(output, str) or output not in OUTPUTS:
            valid = ", ".join(f"{o} ({what})" for o, what in OUTPUTS.items())
            raise TasksFileError(f"{source}: tasks.{name} = {_short(output)} is not an output; valid outputs: {valid}.")
    default = data.get("default", DEFAULT_TASK)
    if not isinstance(default, str) or default not in tasks:
        listed = ", ".join(t for t in TASKS if t in tasks)
        raise TasksFileError(f"{source}: default = {_short(default)} is not one of its tasks; valid: {listed}.")
    return TaskMap(default=default, tasks=tasks, source=source)


def _short(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."
