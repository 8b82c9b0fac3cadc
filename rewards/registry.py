"""Reward functions by name: a decorator registry plus `pkg.mod:func` / `file.py:func` references.

A reward function has TRL's GRPOTrainer signature, so users bring theirs unchanged:

    def my_reward(prompts, completions, completion_ids=None, **columns) -> list[float | None]

Dataset columns arrive as keyword lists (one value per completion); `None` means "no
opinion" for that sample; async functions are allowed.

    @rewards.register("brevity")
    def brevity(prompts, completions, **kwargs): ...

    rewards.get("brevity") / rewards.get("my_pkg.scoring:f1") / rewards.get("scoring.py:f1")
"""

from __future__ import annotations

import importlib
import importlib.util
import math
import os
import sys
from dataclasses import dataclass, field
from typing import Callable, Literal

import cloudpickle

RewardFn = Callable[..., list]

_REGISTRY: dict[str, RewardFn] = {}
_IN_PROCESS: set[str] = set()  # built-ins that are safe to call in the trainer's own process


def register(name: str, *, in_process: bool = False) -> Callable[[RewardFn], RewardFn]:
    """Decorator: make `fn` available as `name` in configs (`rewards: [{name: ...}]`)."""

    def decorator(fn: RewardFn) -> RewardFn:
        if name in _REGISTRY and _where(_REGISTRY[name]) != _where(fn):  # re-importing the same code is fine
            raise ValueError(f"reward '{name}' is already registered (by {_REGISTRY[name].__module__})")
        _REGISTRY[name] = fn
        if in_process:
            _IN_PROCESS.add(name)
        return fn

    return decorator


def _where(fn: RewardFn) -> tuple:
    code = getattr(fn, "__code__", None)
    return (getattr(code, "co_filename", None), getattr(fn, "__qualname__", repr(fn)))


def names() -> list[str]:
    _load_builtins()
    return sorted([*_REGISTRY, *TRL_REWARDS])


def runs_in_process(name_or_reference: str) -> bool:
    """True for the built-in verifiers that are bounded by construction (no process pool needed)."""
    _load_builtins()
    return name_or_reference in _IN_PROCESS


# TRL's own reward functions (`trl.rewards`), usable by name next to ours and run unchanged.
# The get_* ones are factories: give their arguments as the spec's `args`.
TRL_REWARDS = ("accuracy_reward", "reasoning_accuracy_reward", "think_format_reward", "get_cosine_scaled_reward",
               "get_repetition_penalty_reward", "get_soft_overlong_punishment")


def get(name_or_reference: str, args: dict | None = None) -> RewardFn:
    """A registered name, one of TRL's (`think_format_reward`, ...), 'package.module:function' or
    'path/to/file.py:function' -> the callable. With `args` the reference is a factory
    (e.g. TRL's get_cosine_scaled_reward) called with them to make the reward function."""
    fn = _resolve(name_or_reference)
    if args is None:
        return fn
    try:
        made = fn(**args)
    except TypeError as exc:
        raise KeyError(f"reward '{name_or_reference}': cannot be made with args {args}: {exc}") from None
    if not callable(made):
        raise KeyError(f"reward '{name_or_reference}' with args {args} returned {type(made).__name__}, "
                       f"not a reward function")
    return made


def _resolve(name_or_reference: str) -> RewardFn:
    _load_builtins()
    if name_or_reference in _REGISTRY:
        return _REGISTRY[name_or_reference]
    if name_or_reference in TRL_REWARDS:
        import trl.rewards

        return getattr(trl.rewards, name_or_reference)
    if ":" not in name_or_reference:
        from difflib import get_close_matches

        close = get_close_matches(name_or_reference, [*_REGISTRY, *TRL_REWARDS], n=1)
        hint = (f" (did you mean '{close[0]}'?)" if close
                else f" (registered: {', '.join(sorted(_REGISTRY))}; TRL's: {', '.join(TRL_REWARDS)})")
        raise KeyError(f"unknown reward '{name_or_reference}'{hint}; or give 'pkg.module:function' "
                       f"or 'file.py:function'")
    return load_attribute(name_or_reference, "reward")


def load_attribute(reference: str, what: str = "reward"):
    """What 'pkg.module:name' or 'file.py:name' names (a user's reward function or objective class);
    a KeyError saying what is missing otherwise."""
    target, _, attr = reference.rpartition(":")
    if target.endswith(".py"):
        module = _load_file(target, what)
    else:
        try:
            module = importlib.import_module(target)
        except ImportError as exc:
            raise KeyError(f"{what} '{reference}': cannot import module '{target}': {exc}") from exc
    value = getattr(module, attr, None)
    if not callable(value):
        raise KeyError(f"{what} '{reference}': '{target}' has no {'function' if what == 'reward' else 'class'} '{attr}'")
    return value


def _load_file(path: str, kind: str = "reward"):
    """Import a .py file by path (once; the module is cached under a name derived from its path)."""
    full = os.path.abspath(path)
    if not os.path.isfile(full):
        what = ("is a directory, not a Python file" if os.path.isdir(full) else
                "is not a regular file" if os.path.exists(full) else "not found")
        raise KeyError(f"{kind} file '{path}' {what}")
    name = "dlmrl_reward_" + "".join(c if c.isalnum() else "_" for c in full)
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, full)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        try:
            spec.loader.exec_module(module)
        except SyntaxError as exc:
            del sys.modules[name]
            raise KeyError(f"{kind} file '{path}' line {exc.lineno}: syntax error ({exc.msg})") from None
        except Exception as exc:  # noqa: BLE001 — the user's module failed at import: say where
            del sys.modules[name]
            raise KeyError(f"{kind} file '{path}' failed to import: {type(exc).__name__}: {exc}") from None
        # the reward pool's processes cannot import a module by this made-up name: ship its code
        cloudpickle.register_pickle_by_value(module)
    return sys.modules[name]


def _load_builtins() -> None:
    """Register the built-in verifiers (rewards/builtin.py), once."""
    import rewards.d1  # noqa: F401 — d1's parsers add themselves to BUILTINS
    from rewards.builtin import BUILTINS

    for name, fn, in_process in BUILTINS:
        if name not in _REGISTRY:
            register(name, in_process=in_process)(fn)


@dataclass
class RewardSpec:
    """One reward function and its weight: a registered `name`, or `fn` = 'pkg.mod:func' | 'file.py:func'."""

    name: str | None = None
    fn: str | None = None
    weight: float = 1.0
    args: dict | None = None  # the reference is a factory: call it with these (e.g. get_cosine_scaled_reward)
    conversational: bool = False  # pass completions as [{"role": "assistant", "content": ...}] (TRL chat format);
    # always so when the prompts are conversational, as in TRL

    def __post_init__(self) -> None:
        if (self.name is None) == (self.fn is None):
            raise ValueError("each reward needs exactly one of 'name' or 'fn'")
        if not math.isfinite(self.weight):
            raise ValueError(f"reward '{self.name or self.fn}': 'weight' must be a finite number, got {self.weight}")

    @property
    def reference(self) -> str:
        return self.name or self.fn

    @property
    def label(self) -> str:
        """The name used in metrics: `rewards/<label>/mean`."""
        label = self.name or self.fn.rpartition(":")[2]
        return label.removeprefix("get_") if self.args is not None else label


@dataclass
class IntermediateConfig:
    """`rewards.intermediate`: at the chosen denoising steps, the canvas's one-forward completion ŷ_t
    (every [MASK] filled with the argmax, committed tokens kept) is scored by the same rewards, and
    the step's advantage is set from it (reasoning/credit.py: EGSPO-SA's step value or MDPO's adv-v4)."""

    at: list[int] = field(default_factory=list)  # steps t (0 = the fully masked canvas); empty = off
    weight: float = 0.5  # λ: EGSPO-SA's mix of r and r - r(ŷ_t); MDPO's weight next to the outcome advantage
    mode: Literal["egspo", "mdpo"] = "egspo"

    def __post_init__(self) -> None:
        if any(isinstance(t, bool) or not isinstance(t, int) or t < 0 for t in self.at) or len(set(self.at)) != len(self.at):
            raise ValueError(f"reward setting 'at': expected distinct step numbers >= 0, got {self.at}")
        if not (math.isfinite(self.weight) and self.weight >= 0):
            raise ValueError(f"reward setting 'weight': expected a number >= 0, got {self.weight}")
        if self.mode not in ("egspo", "mdpo"):
            raise ValueError(f"reward setting 'mode': expected egspo or mdpo, got {self.mode!r}")
        self.at = sorted(self.at)

    @property
    def enabled(self) -> bool:
        return bool(self.at)


@dataclass
class RewardsConfig:
    """The `rewards` config block. A plain YAML list is read as `functions`."""

    functions: list[RewardSpec] = field(default_factory=list)
    intermediate: IntermediateConfig = field(default_factory=IntermediateConfig)
    timeout_s: float = 30.0  # per call of one function on one batch
    on_error: Literal["zero", "skip", "raise"] = "zero"  # a raising / hanging / malformed reward
    workers: int = 2  # processes that run user reward functions (killed and restarted on a hang)

    def __post_init__(self) -> None:
        if not (math.isfinite(self.timeout_s) and self.timeout_s > 0):
            raise ValueError(f"reward setting 'timeout_s': expected a number of seconds > 0, got {self.timeout_s}")
        if self.workers < 1:
            raise ValueError(f"reward setting 'workers': expected >= 1, got {self.workers}")
