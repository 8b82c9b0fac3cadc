"""Turn nested dicts (YAML + `key.sub=value` overrides) into typed, validated dataclasses.

Errors are the point of this module: every problem names the dotted key, what was
expected, and, for unknown keys, the closest valid one. Nothing here knows about
dlmrl's blocks; `reasoning.config` declares them.
"""

from __future__ import annotations

import dataclasses
import difflib
import re
import keyword
import types
import typing
from typing import Any, Literal, Union, get_args, get_origin, get_type_hints

import yaml


class ConfigError(ValueError):
    """A config problem a user can fix; the message names the key or file."""


def shown(value: Any, limit: int = 80) -> str:
    """A value as an error message quotes it: its repr, cut to `limit` characters (a huge value
    must not become a huge message)."""
    text = repr(value) if not isinstance(value, (list, dict)) or len(value) < 1000 else f"<{type(value).__name__} " \
        f"of {len(value)} items>"
    return text if len(text) <= limit else text[:limit] + f"... ({len(text)} characters)"


def odd_characters(key: str) -> str:
    """' (it contains U+0430 CYRILLIC SMALL LETTER A at position 3)' for a key with a character that
    is not plain ASCII — a look-alike letter or an invisible one looks identical to the valid key."""
    import unicodedata

    for position, char in enumerate(key):
        if not (char.isascii() and char.isprintable()):
            name = unicodedata.name(char, "an unnamed character")
            return f" (it contains U+{ord(char):04X} {name} at position {position}, which is not plain ASCII)"
    return ""


MAX_YAML_NODES = 100_000  # a config is a few hundred nodes; aliases may not expand one past this


class StrictLoader(yaml.SafeLoader):
    """PyYAML's safe loader, refusing duplicate keys (the later one would silently win)."""

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            try:
                duplicate = key in seen
                seen.add(key)
            except TypeError:
                continue  # unhashable: the base class says so
            if duplicate:
                raise ConfigError(f"duplicate key {shown(key)} on line {key_node.start_mark.line + 1}: "
                                  f"each key may appear once in a block")
        return super().construct_mapping(node, deep)


def load_yaml(text: str, where: str) -> Any:
    """YAML text -> Python, with duplicate keys refused and aliases bounded *before* they are
    expanded (a 300-byte alias bomb stands for 10⁹ nodes). `where` names the file or override."""
    try:
        root = yaml.compose(text, Loader=StrictLoader)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{where} is not valid YAML: {exc}") from None
    sizes: dict[int, int] = {}

    def size(node, path: frozenset = frozenset()) -> int:
        if id(node) in sizes:
            return sizes[id(node)]
        if id(node) in path:
            raise ConfigError(f"{where}: a YAML alias refers to itself (line {node.start_mark.line + 1})")
        inside = path | {id(node)}
        children = ([n for pair in node.value for n in pair] if isinstance(node, yaml.MappingNode) else
                    node.value if isinstance(node, yaml.SequenceNode) else [])
        total = 1
        for child in children:
            total += size(child, inside)
            if total > MAX_YAML_NODES:
                raise ConfigError(f"{where}: its YAML aliases expand to more than {MAX_YAML_NODES:,} values "
                                  f"(line {node.start_mark.line + 1}); a config needs far fewer")
        sizes[id(node)] = total
        return total

    if root is None:
        return None
    size(root)
    try:
        return yaml.load(text, Loader=StrictLoader)  # noqa: S506 — a SafeLoader subclass
    except ConfigError as exc:
        raise ConfigError(f"{where}: {exc}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{where} is not valid YAML: {exc}") from None


def suggest(name: str, valid: typing.Iterable[str]) -> str:
    """' (did you mean 'x'?)' for the closest valid name, or a list of the valid ones."""
    valid = sorted(valid)
    close = difflib.get_close_matches(name, valid, n=1, cutoff=0.5)
    if close:
        return f" (did you mean '{close[0]}'?)"
    return f" (valid keys: {', '.join(valid)})" if valid else ""


def field_name(key: str) -> str:
    """The dataclass field behind a YAML key: a Python keyword (`async`) is spelled `async_`."""
    return f"{key}_" if keyword.iskeyword(key) else key


def yaml_key(name: str) -> str:
    """The YAML key of a dataclass field (inverse of `field_name`)."""
    return name[:-1] if name.endswith("_") and keyword.iskeyword(name[:-1]) else name


def _type_name(tp: Any) -> str:
    origin = get_origin(tp)
    if origin is Literal:
        return " | ".join(repr(a) for a in get_args(tp))
    if origin in (Union, types.UnionType):
        return " | ".join(_type_name(a) for a in get_args(tp))
    if origin is not None:
        return f"{origin.__name__}[{', '.join(_type_name(a) for a in get_args(tp))}]"
    return "null" if tp is type(None) else getattr(tp, "__name__", str(tp))


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Check `value` against the annotation `tp`; convert where it is lossless (int -> float)."""
    origin = get_origin(tp) or (tp if tp in (list, dict) else None)
    if tp is Any:
        return value
    if origin in (Union, types.UnionType):
        for option in get_args(tp):
            try:
                return _coerce(value, option, key)
            except ConfigError:
                pass
        raise ConfigError(f"config key '{key}': expected {_type_name(tp)}, got {shown(value)}")
    if tp is type(None):
        if value is None:
            return None
        raise ConfigError(f"config key '{key}': expected null, got {shown(value)}")
    if origin is Literal:
        if value in get_args(tp):
            return value
        hint = suggest(str(value), [str(a) for a in get_args(tp)])
        raise ConfigError(f"config key '{key}': expected one of {_type_name(tp)}, got {shown(value)}{hint}")
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, value, key)
    if origin is list:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"config key '{key}': expected a list, got {shown(value)}")
        (item_tp,) = get_args(tp) or (Any,)
        return [_coerce(v, item_tp, f"{key}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"config key '{key}': expected a mapping, got {shown(value)}")
        return dict(value)
    if tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif tp is str:
        if isinstance(value, str):
            return value
    else:
        raise TypeError(f"schema for '{key}' uses unsupported type {tp!r}")
    raise ConfigError(
        f"config key '{key}': expected {_type_name(tp)}, got {shown(value)} ({type(value).__name__})"
    )


def from_dict(cls: type, data: Any, prefix: str = "") -> Any:
    """Build dataclass `cls` from a mapping, rejecting unknown keys and wrong types."""
    where = f"'{prefix}'" if prefix else "the top level"
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"config block {where}: expected a mapping, got {shown(data)}")
    hints = get_type_hints(cls)
    fields = {yaml_key(f.name): f for f in dataclasses.fields(cls) if f.init}
    kwargs = {}
    for key, value in data.items():
        dotted = f"{prefix}.{key}" if prefix else str(key)
        if key not in fields:
            raise ConfigError(f"unknown config key {shown(dotted)}{odd_characters(str(key))}"
                              f"{suggest(str(key), fields)}")
        kwargs[field_name(key)] = _coerce(value, hints[field_name(key)], dotted)
    try:
        obj = cls(**kwargs)
    except ConfigError:
        raise
    except (TypeError, ValueError) as exc:
        raise (setting_error(exc, prefix) or ConfigError(f"config block {where}: {exc}")) from exc
    return obj


SETTING = re.compile(r"^(decoding|reward|ray|model) setting '([^']+)'")


def setting_error(exc: BaseException, block: str) -> ConfigError | None:
    """A lower layer's error about one of its settings ("reward setting 'timeout_s': ...", in its
    own terms) as the config key it came from ("config key 'rewards.timeout_s': ..."); None if the
    error is not about a setting. The only place config names meet rollouts/ and rewards/."""
    message = str(exc)
    found = SETTING.match(message)
    if found is None or not block:
        return None
    return ConfigError(f"config key '{block}.{found.group(2)}'{message[found.end():]}")


def drop_unknown_keys(cls: type, data: Any, prefix: str = "") -> list[str]:
    """Remove, in place, the keys of `data` that `cls` does not declare; return their dotted names.

    For configs a run saved itself (an older dlmrl may have named a setting differently):
    a user's own config is never pruned, its unknown keys stay errors."""
    if not isinstance(data, dict):
        return []
    hints = get_type_hints(cls)
    fields = {yaml_key(f.name) for f in dataclasses.fields(cls) if f.init}
    dropped = []
    for key in list(data):
        dotted = f"{prefix}.{key}" if prefix else str(key)
        if key not in fields:
            dropped.append(dotted)
            del data[key]
        elif dataclasses.is_dataclass(hints[field_name(key)]):
            dropped += drop_unknown_keys(hints[field_name(key)], data[key], dotted)
    return dropped


def to_dict(obj: Any) -> Any:
    """Dataclass -> plain dict (for YAML), keys spelled as in YAML (`async`, not `async_`)."""
    def rename(value: Any) -> Any:
        if isinstance(value, dict):
            return {yaml_key(k) if isinstance(k, str) else k: rename(v) for k, v in value.items()}
        return value
    return rename(dataclasses.asdict(obj))


def parse_override(text: str) -> tuple[list[str], Any]:
    """'trainer.lr=1e-4' -> (['trainer', 'lr'], 0.0001). Values are read as YAML scalars."""
    if "=" not in text:
        raise ConfigError(f"override '{text}': expected key.sub=value")
    key, raw = text.split("=", 1)
    key = key.strip()
    if not key or any(not part for part in key.split(".")):
        raise ConfigError(f"override '{text}': expected key.sub=value")
    try:
        value = load_yaml(raw, f"override '{key.strip()}'") if raw.strip() else ""
    except ConfigError as exc:
        if "not valid YAML" not in str(exc):
            raise
        value = raw
    # YAML reads 1e-4 as a string (no dot); a number is what a user means.
    if isinstance(value, str):
        try:
            value = float(value) if any(c in value.lower() for c in ".e") else value
        except ValueError:
            pass
    return key.split("."), value


def apply_override(tree: dict, path: list[str], value: Any) -> None:
    """Set tree[a][b]... = value, creating intermediate mappings."""
    node = tree
    for i, part in enumerate(path[:-1]):
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        if not isinstance(child, dict):
            dotted = ".".join(path[: i + 1])
            raise ConfigError(f"override '{'.'.join(path)}': '{dotted}' is not a block")
        node = child
    node[path[-1]] = value
