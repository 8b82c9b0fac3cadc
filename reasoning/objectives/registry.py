"""The objective registry: `@register` a class, `objective_class(name)` finds it (a user's own as
`module:Class`), `build_objective` makes one with its own settings."""

from __future__ import annotations

import difflib
from dataclasses import fields
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from reasoning.objectives.base import Objective, ObjectiveSettings

OBJECTIVES: dict[str, type["Objective"]] = {}


def register(cls: type[Objective]) -> type[Objective]:
    """Class decorator: `trainer.objective: <cls.name>` selects it from then on."""
    if not cls.name:
        raise ValueError(f"objective class {cls.__name__} needs a `name`")
    OBJECTIVES[cls.name] = cls
    return cls


def objective_class(name: str, key: str = "trainer.objective") -> type[Objective]:
    """The registered class called `name` (a user's own as `module:Class` or `file.py:Class`, registered
    on first use), or an error that names the config key and the choices."""
    from reasoning.objectives.base import Objective
    from reasoning.plugins import register_user_class

    register_user_class(name, OBJECTIVES, Objective, key, "reasoning.objectives.Objective")
    if name not in OBJECTIVES:
        close = difflib.get_close_matches(str(name), list(OBJECTIVES), n=1, cutoff=0.5)
        raise ValueError(f"config key '{key}': expected one of {', '.join(OBJECTIVES)}, got {name!r}"
                         + (f" (did you mean '{close[0]}'?)" if close else ""))
    return OBJECTIVES[name]


def build_objective(name: str, settings: ObjectiveSettings | None = None, **values: Any) -> Objective:
    """An objective with its own settings: the fields of `settings` (any ObjectiveSettings) and
    `values` that its `Settings` declares. A value only other registered objectives declare is
    left out (one call can configure every objective); a name none declares is an error."""
    cls = objective_class(name)
    given = {f.name: getattr(settings, f.name) for f in fields(settings)} if settings is not None else {}
    known = {f.name for c in OBJECTIVES.values() for f in fields(c.Settings)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise TypeError(f"objective settings: unknown key(s) {', '.join(unknown)} (known: {', '.join(sorted(known))})")
    own = {f.name for f in fields(cls.Settings)}
    merged = {k: v for k, v in {**given, **values}.items() if k in own}
    if merged.get("kl_coef", 0) > 0 and not cls.has_kl:
        raise ValueError(f"config key 'trainer.kl_coef': objective '{name}' has no KL term; set it to 0")
    return cls(cls.Settings(**merged))
