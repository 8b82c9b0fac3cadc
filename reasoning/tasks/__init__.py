"""Reasoning tasks, by name: the built-in ones register themselves on import (`@register_task`)."""

from __future__ import annotations

from reasoning.tasks import addition, addition_trace, countdown, files, sudoku4  # noqa: F401  (registers them)
from reasoning.tasks.base import DataConfig, Task
from reasoning.tasks.registry import TASKS, get_task, register_task, task_class

__all__ = ["DataConfig", "TASKS", "Task", "get_task", "register_task", "task_class"]
