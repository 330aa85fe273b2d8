"""Structured input read safely: a JSON file, bounded in size and nesting, validated against a JSON Schema.

    >>> from mnist_zoo.schema import read_json, schema_of
    >>> read_json("best.json", {"type": "object", "required": ["model"]}, what="--recipe-file best.json")
    >>> schema_of(Recipe)   # a dataclass's fields as a JSON Schema, derived from its type hints

Every problem is one UserError line naming the file and, for a schema failure, the field's path, e.g.
"--recipe-file best.json: recipe.epochs must be integer, got 1.5". The size is capped before anything is read,
and the nesting depth and the number of arrays and objects before the text is parsed, so no file can make the
reader use more than a few hundred MB or overflow Python's parser (RecursionError near 1,000 levels). NaN,
Infinity, -Infinity (which Python's json reads, and JSON has not) and numbers past a float's range are refused,
naming the field. Validation is `jsonschema`'s, the reference implementation
of the standard: its errors carry the path of the failing field, which is what the one line needs.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
import types
import typing
from collections.abc import Iterable, Iterator
from pathlib import Path

import jsonschema
import numpy as np

from mnist_zoo.util import UserError, first_line

MAX_BYTES = 4 << 20  # 4 MiB: the largest file the zoo writes, a run record with its predictions, is ~30 KB
MAX_DEPTH = 64  # the zoo's files nest 4 levels deep; anything near Python's recursion limit is not ours
# Parsed, an empty {} of 3 bytes takes ~200 bytes: 4 MiB of them would be 300 MB (16 MiB measured 1.2 GB). The
# zoo's files hold a few thousand arrays and objects; a million bounds the parser's memory whatever the text.
MAX_CONTAINERS = 1_000_000
# Every other value (a number, a string, true, false, null) parsed is an object of 24-60 bytes and a pointer: a
# file of "ab",... would take ~80 bytes per byte. Counted before parsing too; a benchmark file's raw timings
# (pytest-benchmark's stats.data, 2,400 numbers in a quick row) are most of its values.
MAX_VALUES = 4_000_000
# A string parsed costs ~50 bytes and, in the bracket count below, a piece of the regex's output: counted first,
# by its quotes, before anything is built (3 million strings took 1 GB in that count alone). The zoo's largest
# files, a full benchmark run's, hold ~30,000.
MAX_STRINGS = 250_000

# "integer" in JSON Schema accepts 1.0; a Python int field must not get a float (range(1.0) fails mid-run).
_TYPES = jsonschema.Draft202012Validator.TYPE_CHECKER.redefine(
    "integer", lambda _, v: isinstance(v, int) and not isinstance(v, bool)
)
_VALIDATOR = jsonschema.validators.extend(jsonschema.Draft202012Validator, type_checker=_TYPES)
# A JSON string, escapes included (the unrolled form: linear time, no backtracking on long strings).
_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"', re.DOTALL)
_NOT_BRACKETS = bytes(b for b in range(256) if b not in b"[]{}")  # bytes.translate deletes these, in C
# What a NaN, an infinity or a number past a float's range parses to, until it is refused: Python's json reads
# NaN, Infinity and -Infinity, which JSON has not, and a schema's "number" would take them (a NaN p50_s, an
# infinite lr). One object, so the refusal can find where it sits.
_NON_FINITE = object()
_PYTHON_TO_JSON = {str: "string", int: "integer", float: "number", bool: "boolean", type(None): "null"}


def read_json(
    path: str | Path,
    schema: dict | None = None,
    *,
    what: str | None = None,
    max_bytes: int = MAX_BYTES,
    max_depth: int = MAX_DEPTH,
    max_values: int = MAX_VALUES,
) -> object:
    """The JSON document in `path`, valid against `schema` (any JSON when None); else one UserError line that
    starts with `what` (default: the path)."""
    what = what or str(path)
    try:
        with open(path, "rb") as f:
            data = f.read(max_bytes + 1)  # never more than the cap, whatever the file (or a pipe) holds
    except OSError as e:
        raise UserError(f"{what}: {e.strerror or e}") from None
    if len(data) > max_bytes:
        raise UserError(f"{what}: larger than {max_bytes:,} bytes, not a file of ours")
    return parse_json(data, schema, what=what, max_depth=max_depth, max_values=max_values)


def parse_json(
    data: bytes,
    schema: dict | None = None,
    *,
    what: str,
    max_depth: int = MAX_DEPTH,
    max_values: int = MAX_VALUES,
) -> object:
    """read_json's checks and parsing for JSON text already in memory (e.g. a file inside an archive; its size
    is the caller's to cap)."""
    if data.count(b'"') > 2 * MAX_STRINGS:
        raise UserError(f"{what}: more than {MAX_STRINGS:,} strings, not a file of ours")
    depth, containers, values = _shape(data)
    if depth > max_depth:
        raise UserError(f"{what}: nested {depth} levels deep, more than {max_depth}")
    if containers > MAX_CONTAINERS:
        raise UserError(f"{what}: {containers:,} arrays and objects, more than {MAX_CONTAINERS:,}")
    if values > max_values:
        raise UserError(f"{what}: about {values:,} values, more than {max_values:,}")
    non_finite: list[str] = []  # their text, in the order of the file

    def refuse(text: str) -> object:
        non_finite.append(text)
        return _NON_FINITE

    def number(text: str) -> float | object:
        value = float(text)
        return value if math.isfinite(value) else refuse(text)  # 1e999 parses to inf

    try:
        doc = json.loads(data, parse_constant=refuse, parse_float=number)
    except (ValueError, RecursionError, MemoryError) as e:  # UnicodeDecodeError and JSONDecodeError included
        raise UserError(f"{what}: not JSON ({_short(e)})") from None
    if non_finite:
        where = field_path(_path_to(doc, _NON_FINITE)) or "the document"
        text = non_finite[0] if len(non_finite[0]) <= 24 else non_finite[0][:21] + "..."  # 400 digits .0
        raise UserError(f"{what}: {where} is {text}, not a finite number (JSON has no NaN or Infinity)")
    if schema is not None:
        check(doc, schema, what=what)
    return doc


def check(doc: object, schema: dict, *, what: str) -> object:
    """`doc`, if valid against `schema`; else one UserError line naming the first failing field."""
    validator = _VALIDATOR(schema)
    error = jsonschema.exceptions.best_match(validator.iter_errors(doc))
    if error is not None:
        raise UserError(f"{what}: {describe(error)}")
    return doc


def _path_to(doc: object, target: object) -> list[str | int]:
    """The path of the first `target` (by identity) in `doc`, in document order; [] if `doc` is it or lacks it.
    Without recursion, and holding one iterator per level, whatever the number of values."""
    path: list[str | int] = []
    levels = [_children(doc)]
    while levels:
        for key, value in levels[-1]:
            if value is target:
                return [*path, key]
            if isinstance(value, dict | list):
                path.append(key)
                levels.append(_children(value))
                break
        else:  # this level done: back to its parent
            levels.pop()
            if path:
                path.pop()
    return []


def _children(value: object) -> Iterator[tuple[str | int, object]]:
    return iter(
        value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    )


def nesting_depth(data: bytes) -> int:
    """How deep the arrays and objects in a JSON text nest, brackets inside strings not counted."""
    return _shape(data)[0]


def _shape(data: bytes) -> tuple[int, int, int]:
    """(nesting depth, number of arrays and objects, about how many values) of a JSON text, what is inside
    strings not counted; counted on the bytes with numpy, so the cost is linear and small whatever the text."""
    bare = _STRING.sub(b"", data)
    values = bare.count(b",") + bare.count(b":") + 1  # each separator starts a value (an object's key is one)
    brackets = np.frombuffer(bare.translate(None, _NOT_BRACKETS), dtype=np.uint8)
    if brackets.size == 0:
        return 0, 0, values
    opens = (brackets == ord("[")) | (brackets == ord("{"))
    return int(np.cumsum(np.where(opens, 1, -1), dtype=np.int64).max()), int(opens.sum()), values


def describe(error: jsonschema.ValidationError) -> str:
    """A schema failure in words: the field's path first (e.g. recipe.epochs, runs[3]), then what it must be."""
    where = field_path(error.absolute_path) or "the document"
    if error.validator == "type":
        wanted = error.validator_value
        wanted = " or ".join(wanted) if isinstance(wanted, list) else wanted
        return f"{where} must be {wanted}, got {_short(error.instance)}"
    if error.validator in ("enum", "const"):
        allowed = error.validator_value if error.validator == "enum" else [error.validator_value]
        return f"{where} must be {' or '.join(map(repr, allowed))}, got {_short(error.instance)}"
    if error.validator == "required":
        missing = [k for k in error.validator_value if k not in error.instance]
        return f"{where} lacks {', '.join(missing)}"
    if error.validator == "additionalProperties":
        extra = sorted(set(error.instance) - set(error.schema.get("properties", {})))
        return f"{where} has unknown field(s) {', '.join(k if k.isprintable() else repr(k) for k in extra)[:120]}"
    return f"{where}: {' '.join(error.message.split())[:120]}"


def field_path(parts: Iterable[str | int]) -> str:
    """recipe.epochs, runs[3].accuracy: a JSON path as a user reads it; a key with a newline or another
    unprintable character is shown quoted ('a\\nb'), so the error stays one line."""
    text = ""
    for part in parts:
        if not isinstance(part, int) and not part.isprintable():
            part = repr(part)
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text


def schema_of(cls: type, *, exact: bool = True) -> dict:
    """A JSON Schema for the fields of dataclass `cls`, derived from its type hints so that it cannot drift
    from the class: str, int, float, bool, None and unions of them. `exact`: no other field, and every field
    without a default required (a file written before a setting with a default existed reads with that default)."""
    hints = typing.get_type_hints(cls)
    fields = dataclasses.fields(cls)
    properties = {f.name: {"type": _json_types(hints[f.name], cls, f.name)} for f in fields}
    schema = {"type": "object", "properties": properties}
    if exact:
        missing = dataclasses.MISSING
        required = [f.name for f in fields if f.default is missing and f.default_factory is missing]
        schema.update(required=required, additionalProperties=False)
    return schema


def _json_types(hint: object, cls: type, name: str) -> str | list[str]:
    args = typing.get_args(hint) if typing.get_origin(hint) in (typing.Union, types.UnionType) else (hint,)
    try:
        names = [_PYTHON_TO_JSON[a] for a in args]
    except KeyError:
        raise TypeError(f"{cls.__name__}.{name}: type {hint!r} has no JSON Schema type here") from None
    if "number" in names and "integer" in names:
        names.remove("integer")
    return names[0] if len(names) == 1 else names


def _short(value: object, limit: int = 60) -> str:
    """A value as the error shows it: repr, or an exception's first line; cut short, as values can be huge."""
    text = first_line(value) if isinstance(value, BaseException) else repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."
