"""Tasks: prompt building, training targets and answer parsing per task family (see ``chexone.tasks.base``).

Tasks are looked up by name in the ``chexone.tasks`` registry (built-ins plus installed plugins); use ``get_task``.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Any

from chexone.registry import TASKS, PluginTypeError, RegistryError, UnknownNameError

if TYPE_CHECKING:
    from chexone.tasks.base import Task

__all__ = ["TASKS", "RegistryError", "UnknownNameError", "clear_task_cache", "get_task", "task_names"]

_lock = threading.Lock()
#: name -> (registered object, task instance); rebuilt if the registry now returns another object (after a refresh).
_instances: dict[str, tuple[Any, "Task"]] = {}


def get_task(name: str) -> "Task":
    """The task object for ``name`` from the ``chexone.tasks`` registry, instantiated once and cached.

    Registered classes are instantiated without arguments; registered instances are returned as they are.
    Raises the registry's errors: ``UnknownNameError`` (a ``RegistryError``/``KeyError``, with "did you mean"
    suggestions), ``DuplicateNameError``, ``PluginLoadError`` or ``PluginTypeError``.
    """
    obj = TASKS.get(name)
    with _lock:
        cached = _instances.get(name)
        if cached is not None and cached[0] is obj:
            return cached[1]
        if isinstance(obj, type):
            try:
                task = obj()
            except TypeError as exc:
                raise PluginTypeError(
                    f'task "{name}" ({TASKS.origin(name)}): {obj.__qualname__} must be constructible without '
                    f"arguments ({exc}); register an instance instead"
                ) from exc
        else:
            task = obj
        _instances[name] = (obj, task)
        return task


def task_names() -> list[str]:
    """All task names known to the registry (built-ins and installed plugins)."""
    return TASKS.names()


def clear_task_cache() -> None:
    """Forget cached task instances (tests; after ``TASKS.refresh()`` stale instances are rebuilt anyway)."""
    with _lock:
        _instances.clear()
