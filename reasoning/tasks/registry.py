"""The task registry: `@register_task` a Task subclass and `data.task: <its name>` selects it; a
user's own task is named `module:Class` or `path/to/file.py:Class`, as rewards take `fn:`."""

from __future__ import annotations

from reasoning.plugins import register_user_class
from reasoning.schema import ConfigError, suggest
from reasoning.tasks.base import Task

TASKS: dict[str, type[Task]] = {}


def register_task(cls: type[Task]) -> type[Task]:
    """Class decorator: `data.task: <cls.name>` (and `dlmrl eval --task`) selects it from then on."""
    if not (isinstance(cls, type) and issubclass(cls, Task)):
        raise TypeError(f"register_task: {cls!r} is not a Task subclass (reasoning.tasks.Task)")
    if not cls.name:
        raise ValueError(f"task class {cls.__name__} needs a `name`")
    TASKS[cls.name] = cls
    return cls


def task_class(name: str, key: str = "data.task") -> type[Task]:
    """The registered class called `name` (a user's own as `module:Class`, registered on first use),
    or an error naming the config key and the choices."""
    register_user_class(name, TASKS, Task, key, "reasoning.tasks.Task")
    if name not in TASKS:
        raise ConfigError(f"config key '{key}': unknown task '{name}'{suggest(str(name), TASKS)} "
                          f"(or your own as module:Class)")
    return TASKS[name]


def get_task(name: str) -> Task:
    return task_class(name)()
