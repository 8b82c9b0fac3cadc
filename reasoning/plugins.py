"""A user's own class, named in a config as `module:Class` or `path/to/file.py:Class` (an objective,
a task): imported once and registered under that name, the way rewards take `fn:`."""

from __future__ import annotations

from reasoning.schema import ConfigError


def register_user_class(name: str, registry: dict, base: type, key: str, where: str) -> None:
    """Put the class `name` refers to into `registry` under `name`, unless it is there already.
    `base` is what it must subclass (`where`: that class's public path, for the error); `key` is
    the config key that named it."""
    if name in registry or ":" not in str(name):
        return
    from rewards.registry import load_attribute

    try:
        cls = load_attribute(name, base.__name__.lower())
    except KeyError as exc:
        raise ConfigError(f"config key '{key}': {exc.args[0]}") from None
    if not (isinstance(cls, type) and issubclass(cls, base)):
        article = "an" if base.__name__[0] in "AEIOU" else "a"
        raise ConfigError(f"config key '{key}': '{name}' is not {article} {base.__name__} subclass ({where})")
    registry[name] = cls
