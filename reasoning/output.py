"""What the command line shows: one progress display per phase, and the libraries kept quiet.

In a terminal a phase (SFT, RL, preference training) is one tqdm bar whose postfix carries the
step, the reward, the last held-out accuracy and seconds per step. When stderr is not a terminal
(a log file, CI) the same facts come as plain lines, at most one every `every_s` seconds, so a log
holds no bar fragments. Library progress bars (transformers' "Loading weights", "Writing model
shards", datasets' map bars) and known deprecation warnings are silenced unless `--verbose` or
`logging.verbose: true` asks for them.
"""

from __future__ import annotations

import logging
import os
import sys
import time
import warnings

from tqdm.auto import tqdm

_QUIET_LOGGERS = ("transformers", "datasets", "huggingface_hub", "DeepSpeed", "deepspeed", "torch.distributed",
                  "ray", "peft", "accelerate")


_VERBOSE: list[bool | None] = [None]  # None: not set by a command line; the libraries keep their defaults


def quiet_loggers() -> None:
    """The libraries' loggers at the level in force (again: a library may reset its own on import)."""
    if _VERBOSE[0] is None:
        return
    level = logging.INFO if _VERBOSE[0] else logging.ERROR
    for name in _QUIET_LOGGERS:
        logging.getLogger(name).setLevel(level)


def set_verbose(verbose: bool) -> None:
    """Quiet (False): library bars off, their INFO logs and known deprecation warnings hidden.
    Verbose (True): the libraries' own defaults."""
    _VERBOSE[0] = verbose
    level = logging.INFO if verbose else logging.ERROR
    quiet_loggers()
    os.environ["TRANSFORMERS_VERBOSITY"] = "info" if verbose else "error"
    os.environ["HF_DATASETS_DISABLE_PROGRESS_BARS"] = "0" if verbose else "1"
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity(level)
        (hf_logging.enable_progress_bar if verbose else hf_logging.disable_progress_bar)()
    except ImportError:  # pragma: no cover - transformers is a dependency
        pass
    try:
        import datasets

        (datasets.enable_progress_bars if verbose else datasets.disable_progress_bars)()
    except ImportError:  # pragma: no cover
        pass
    try:
        from huggingface_hub.utils import disable_progress_bars, enable_progress_bars

        (enable_progress_bars if verbose else disable_progress_bars)()
    except ImportError:  # pragma: no cover
        pass
    if verbose:
        warnings.resetwarnings()
    else:
        for category in (FutureWarning, DeprecationWarning, PendingDeprecationWarning):
            warnings.filterwarnings("ignore", category=category)


def is_terminal(stream=None) -> bool:
    stream = sys.stderr if stream is None else stream
    return bool(getattr(stream, "isatty", lambda: False)())


class PhaseProgress:
    """The progress of one phase: a bar in a terminal, else plain lines. The bar runs over steps,
    or over trained seconds (`unit="s"`) for a phase with a time budget."""

    def __init__(self, desc: str, total: float, initial: int = 0, enabled: bool = True, unit: str = "step",
                 every_s: float = 30.0, stream=None) -> None:
        self.desc, self.total, self.unit, self.every_s = desc, total, unit, every_s
        self.stream = sys.stderr if stream is None else stream
        self.enabled, self.fields = enabled, {}
        self.bar = tqdm(total=total, desc=desc, unit=unit, file=self.stream, dynamic_ncols=True,
                        bar_format="{l_bar}{bar}| {n:.0f}/{total:.0f} " + unit + " [{elapsed}{postfix}]") \
            if enabled and is_terminal(self.stream) else None
        self.position, self.step, self.first = 0.0, initial, initial
        self.started, self.last_line, self.printed = time.perf_counter(), 0.0, initial

    def update(self, step: int, position: float | None = None, **fields: float | int | str | None) -> None:
        """The phase reached `step` (and `position` on the bar, default the step); `fields` (reward,
        acc, loss, ...) are shown with it, the last value of each kept."""
        self.fields.update({k: v for k, v in fields.items() if v is not None})
        position = float(step if position is None else position)
        if self.bar is not None:
            self.bar.update(min(position, self.total) - self.position)
        self.position, self.step = min(position, self.total), step
        if self.bar is not None:
            self.bar.set_postfix({k: _short(v) for k, v in self._shown().items()}, refresh=False)
        elif self.enabled and step > self.printed and (time.perf_counter() - self.last_line >= self.every_s
                                                       or position >= self.total):
            self._line()

    def close(self) -> None:
        """The bar's last state stays on screen; a log gets the last step's line if it has none."""
        if self.bar is not None:
            self.bar.close()
        elif self.enabled and self.step > self.printed:
            self._line()

    def _shown(self) -> dict:
        where = {"step": self.step} if self.unit != "step" else {}
        return {**where, **self.fields, "s/step": (time.perf_counter() - self.started) / max(self.step - self.first, 1)}

    def _line(self) -> None:
        self.last_line, self.printed = time.perf_counter(), self.step
        print(f"{self.desc}: {self.position:.0f}/{self.total:.0f} {self.unit}, "
              + ", ".join(f"{k} {_short(v)}" for k, v in self._shown().items()), file=self.stream, flush=True)


def _short(value) -> str:
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) < 1000 else f"{value:.0f}"
    return str(value)
