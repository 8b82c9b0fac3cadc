"""Built-in reasoning tasks, by name."""

from __future__ import annotations

from reasoning.schema import ConfigError, suggest
from reasoning.tasks.addition import Addition
from reasoning.tasks.addition_trace import AdditionTrace
from reasoning.tasks.base import DataConfig, Task
from reasoning.tasks.countdown import Countdown
from reasoning.tasks.files import GSM8K, Math500, TRLDataset
from reasoning.tasks.sudoku4 import Sudoku4

TASKS: dict[str, type[Task]] = {"sudoku4": Sudoku4, "countdown": Countdown, "addition": Addition,
                                 "addition_trace": AdditionTrace,
                                 "gsm8k": GSM8K, "math500": Math500, "trl": TRLDataset}


def get_task(name: str) -> Task:
    if name not in TASKS:
        raise ConfigError(f"config key 'data.task': unknown task '{name}'{suggest(name, TASKS)}")
    return TASKS[name]()


__all__ = ["DataConfig", "TASKS", "Task", "get_task"]
