"""Checking a config dataclass's fields against their annotations, for configs read from user files."""

from __future__ import annotations

import ast
import dataclasses
import difflib
from typing import Any

KIND_WORDS = {"int": "a whole number", "float": "a number between -2^63 and 2^63", "str": "text",
              "bool": "true or false", "None": "empty", "list[str]": "a list of paths", "list[float]": "a list of numbers",
              "tuple[float, float]": "two numbers", "dict[str, Any]": "a mapping of fields",
              "tuple[int, int]": "two whole numbers", "tuple[int, int, int]": "three whole numbers",
              "tuple[int, ...]": "whole numbers"}


def matches(value: Any, kind: str) -> bool:
    """Whether ``value`` fits the field annotation ``kind`` (a string under ``from __future__ import
    annotations``), e.g. "float | None", "list[str]", "tuple[int, ...]", "Literal['a', 'b']"."""
    if kind.startswith("Literal["):
        return value in ast.literal_eval(f"({kind[8:-1]},)")
    if "|" in kind:
        return any(matches(value, option.strip()) for option in kind.split("|"))
    if kind == "None":
        return value is None
    if kind == "bool":
        return isinstance(value, bool)
    if kind == "int":
        return isinstance(value, int) and not isinstance(value, bool)
    if kind == "float":  # larger numbers overflow torch's scalars (and math.isfinite, for an int)
        return isinstance(value, (int, float)) and not isinstance(value, bool) and -2**63 < value < 2**63
    if kind == "str":
        return isinstance(value, str)
    if kind.startswith("list["):
        return isinstance(value, list) and all(matches(v, kind[5:-1]) for v in value)
    if kind.startswith("tuple["):
        parts = [p.strip() for p in kind[6:-1].split(",")]
        if parts[-1] == "...":
            return isinstance(value, tuple) and all(matches(v, parts[0]) for v in value)
        return isinstance(value, tuple) and len(value) == len(parts) and all(map(matches, value, parts))
    if kind.startswith("dict[str"):
        return isinstance(value, dict) and all(isinstance(k, str) for k in value)
    raise TypeError(f"no check for fields of type {kind}")  # a new field of a new kind: teach matches


def describe(kind: str) -> str:
    """An annotation in words, for messages: "float | None" -> "a number between -2^63 and 2^63 or
    empty"."""
    if kind.startswith("Literal["):
        return "one of " + ", ".join(map(str, ast.literal_eval(f"({kind[8:-1]},)")))
    return " or ".join(KIND_WORDS.get(option.strip(), option.strip()) for option in kind.split("|"))


def field_problems(config: Any, skip_choices: bool = False) -> list[str]:
    """One phrase per field of the dataclass instance ``config`` whose value does not fit its annotation
    (with ``skip_choices``, ``Literal`` fields are left to the config's own checks)."""
    return [f"{f.name} must be {describe(f.type)}, got {short_repr(getattr(config, f.name))}"
            for f in dataclasses.fields(config) if not (skip_choices and f.type.startswith("Literal["))
            and not matches(getattr(config, f.name), f.type)]


def whole_number_problem(name: str, value: Any, smallest: int, largest: int) -> str:
    """``"name must be a whole number in [smallest, largest], got value"``, or "" when it is one."""
    if matches(value, "int") and smallest <= value <= largest:
        return ""
    return f"{name} must be a whole number in [{smallest}, {largest}], got {short_repr(value)}"


def short_repr(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def with_suggestion(name: str, known: list[str]) -> str:
    """``name``, and the closest of ``known`` if one is close: ``"step (did you mean steps?)"``."""
    close = difflib.get_close_matches(name, known, n=1)
    return f"{name} (did you mean {close[0]}?)" if close else name
