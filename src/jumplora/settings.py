"""Typed settings: dataclass fields that carry their help text, allowed values and bounds.

Each section of a run's configuration (the model and its family, the data, the optimisation, the
adapters, the method weights, the run itself) is a dataclass of :func:`setting` fields, owned and
validated by the module that uses it. The command line (``jumplora run --help``), the YAML reader
and the validation are built from this metadata, so they cannot drift apart::

    @dataclass
    class OptimConfig:
        batch_size: int = setting(32, "examples per optimiser step", minimum=1)

        def __post_init__(self) -> None:
            check(self)  # types (2.5 is not a batch size), allowed values, bounds: one-line errors

A value is coerced to the field's annotation before it is checked: a number written as text
("1e-3", as YAML reads it, or any flag) becomes the number, a single value for a list field
becomes a list of one, "true"/"off" a boolean.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import reprlib
from pathlib import Path
import types
import typing
from collections.abc import Callable, Iterator
from typing import Any

import yaml

from jumplora.errors import JumploraError

TRUE, FALSE = ("true", "yes", "on", "1"), ("false", "no", "off", "0", "none")  # how a switch is written


def setting(default: Any = dataclasses.MISSING, help: str = "", *, factory: Callable[[], Any] | None = None,
            choices: tuple | Callable[[], tuple] | None = None, minimum: float | None = None,
            above: float | None = None, below: float | None = None, key: str | None = None,
            hidden: bool = False, shown: str | None = None, label: str | None = None, **extra: Any) -> Any:
    """A dataclass field with its metadata.

    ``choices`` (or a function giving them, for lists known only at run time) are the allowed
    values; ``minimum`` (≥), ``above`` (>) and ``below`` (<) bound numbers; ``key`` is the flat name
    of the field in flags, YAML and results.json when it differs from the attribute; ``hidden``
    fields are not settings of a run (internal); ``shown`` is the default as ``--help`` prints it;
    ``label`` names the setting in error messages (default: its key); ``extra`` goes to the command
    line (``flag``, ``action``, ``separator``, ``metavar``).
    """
    metadata = {"help": help, "choices": choices, "minimum": minimum, "above": above, "below": below, "key": key,
                "hidden": hidden, "shown": shown, "label": label, "cli": extra}
    if factory is not None:
        return dataclasses.field(default_factory=factory, metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


def key_of(field: dataclasses.Field) -> str:
    return field.metadata.get("key") or field.name


def choices_of(field: dataclasses.Field) -> tuple | None:
    choices = field.metadata.get("choices")
    return tuple(choices()) if callable(choices) else choices


def default_of(field: dataclasses.Field) -> Any:
    if field.default_factory is not dataclasses.MISSING:
        return field.default_factory()
    return field.default


def fields(cls_or_obj) -> Iterator[dataclasses.Field]:
    """The settings of a section (hidden ones left out)."""
    return (f for f in dataclasses.fields(cls_or_obj) if not f.metadata.get("hidden"))


def check(section) -> None:
    """Coerce every setting of ``section`` to its annotation and check its allowed values and bounds."""
    hints = typing.get_type_hints(type(section))
    for field in dataclasses.fields(section):
        if field.metadata.get("section"):  # a nested section checks itself
            continue
        value = coerce(getattr(section, field.name), hints[field.name], key_of(field))
        _check_value(field, value)
        object.__setattr__(section, field.name, value)


def coerce(value: Any, hint: Any, key: str) -> Any:
    """``value`` as the type ``hint`` (str, int, float, bool, list[X], tuple[X, ...], unions);
    a JumploraError naming ``key`` when it cannot be."""
    options = typing.get_args(hint) if _is_union(hint) else (hint,)
    if value is None and type(None) in options:
        return None
    problems = []
    for option in (o for o in options if o is not type(None)):
        try:
            return _as(value, option, key)
        except _Mismatch as problem:
            problems.append(str(problem))
    raise JumploraError(f"{key} must be {' or '.join(dict.fromkeys(problems))}, got {shorten(value)}")


class _Mismatch(Exception):
    pass


def _as(value: Any, kind: Any, key: str) -> Any:
    origin = typing.get_origin(kind)
    if origin in (list, tuple):
        inner = typing.get_args(kind)[0]
        items = value if isinstance(value, (list, tuple)) else [value]  # `seed: 1` = a list of one
        converted = [_as(item, inner, key) for item in items]
        return converted if origin is list else tuple(converted)
    if kind is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in TRUE + FALSE:
            return value.lower() in TRUE
        raise _Mismatch("true or false")
    if kind in (int, float):
        number = _number(value)
        if number is None or not math.isfinite(number) or (kind is int and not float(number).is_integer()):
            # Infinity and NaN mean nothing as a setting (a temperature of inf trains nothing).
            raise _Mismatch("a whole number" if kind is int else "a finite number")
        return int(number) if kind is int else float(number)
    if kind is str:
        if isinstance(value, str):
            return value
        raise _Mismatch("text (put a number in quotes)")
    raise AssertionError(f"setting {key}: unsupported type {kind}")


def _number(value: Any) -> float | int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return value
    if isinstance(value, str):
        try:
            return float(value) if any(c in value.lower() for c in ".en") else int(value)
        except ValueError:
            return None
    return None


def _is_union(hint: Any) -> bool:
    return typing.get_origin(hint) in (typing.Union, types.UnionType)


def _check_value(field: dataclasses.Field, value: Any) -> None:
    meta = field.metadata
    key = meta.get("label") or key_of(field)
    for item in value if isinstance(value, (list, tuple)) else [value]:
        if item is None:
            continue
        choices = choices_of(field)
        if choices is not None and item not in choices:
            raise JumploraError(f"unknown {key} {shorten(item)}: use one of {', '.join(map(str, choices))}"
                                + did_you_mean(str(item), [str(c) for c in choices]))
        for bound, holds, words in (("minimum", lambda v, b: v >= b, ">="), ("above", lambda v, b: v > b, ">"),
                                    ("below", lambda v, b: v < b, "<")):
            limit = meta.get(bound)
            if limit is not None and isinstance(item, (int, float)) and not holds(item, limit):
                raise JumploraError(f"{key} must be {words} {limit:g}, got {item:g}")


def shorten(value: Any, most: int = 80) -> str:
    """``repr(value)``, cut after ``most`` characters (a message never prints a whole file)."""
    shortener = reprlib.Repr()
    shortener.maxstring, shortener.maxother, shortener.maxlist, shortener.maxdict, shortener.maxlevel = most, most, 8, 8, 3
    text = shortener.repr(value)
    return text if len(text) <= most else text[: most - 3] + "..."


def did_you_mean(word: str, known: list[str]) -> str:
    """`` (did you mean X?)`` for the closest of ``known``, else ``""``. A word that begins known
    names suggests the first of them in ``known``'s order (``jumplora`` -> ``jumplora+inclora``)."""
    starting = [name for name in known if name.startswith(word) and word]
    close = starting[:1] or difflib.get_close_matches(word, known, n=1, cutoff=0.6)
    return f" (did you mean {close[0]}?)" if close else ""


def help_text(field: dataclasses.Field) -> str:
    """What ``--help`` says of a setting: its help, its allowed values, its default."""
    meta, parts = field.metadata, [field.metadata["help"]]
    choices = choices_of(field)
    if choices is not None:
        parts.append("one of " + ", ".join(map(str, choices)))
    shown = meta.get("shown")
    if shown is None:
        default = default_of(field)
        shown = "none" if default is None else (",".join(map(str, default)) if isinstance(default, (list, tuple))
                                                else str(default).lower() if isinstance(default, bool) else str(default))
    parts.append(f"default: {shown}")
    return "; ".join(p for p in parts if p)


# The most values a settings or task file may expand to. YAML aliases repeat a value by reference:
# nine levels of nine aliases make 10⁹ values from a few lines (the "billion laughs"), which any
# walk over them (a message, a copy) would try to build.
MAX_YAML_VALUES = 100_000


def read_yaml(path: Path, what: str):
    """The YAML (or JSON) value in ``path``; a missing or unparsable file, or one whose aliases
    expand past :data:`MAX_YAML_VALUES` values, is a JumploraError naming ``what``."""
    if not path.is_file():
        raise JumploraError(f"{what} {path} not found")
    try:
        value = yaml.safe_load(path.read_text())
    except yaml.YAMLError as error:
        raise JumploraError(f"{what} {path} is not valid YAML: {str(error).splitlines()[0]}") from None
    except (OSError, UnicodeDecodeError) as error:
        raise JumploraError(f"cannot read {what} {path} ({getattr(error, 'strerror', None) or error}): check the file "
                            "and its permissions") from None
    if expanded_size(value, MAX_YAML_VALUES) > MAX_YAML_VALUES:
        raise JumploraError(f"{what} {path} expands to more than {MAX_YAML_VALUES:,} values (YAML aliases repeated "
                            "inside each other): write the values out")
    return value


def expanded_size(value: Any, limit: int) -> int:
    """How many values ``value`` holds once every shared reference is counted as often as it is
    reached (stopping once past ``limit``); a value that contains itself counts as past it."""
    sizes: dict[int, int] = {}

    def size(item: Any, depth: int) -> int:
        if not isinstance(item, (list, dict)):
            return 1
        key = id(item)
        if key in sizes:
            return sizes[key]
        if depth > 100:
            return limit + 1
        sizes[key] = limit + 1  # reached again while being counted: it contains itself
        children = item.values() if isinstance(item, dict) else item
        total = 1
        for child in children:
            total += size(child, depth + 1)
            if total > limit:
                break
        sizes[key] = total
        return total

    return size(value, 0)
