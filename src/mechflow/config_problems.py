"""Config problems as one line each: ``key.path: what is wrong; what is allowed``.

Snakemake's ``validate`` stops at the first schema error and prints the whole schema and config
with it; a researcher with a typo needs every problem at once, the key that is wrong, and a
guess at what was meant. Torch-free and Snakemake-free: the workflow and the tests call it.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterable, Sequence
from typing import Any

# PyYAML (YAML 1.1) reads `3e-3` and `1.0e3` (exponent without a sign) as strings; YAML 1.2
# and every human read numbers.
_SCIENTIFIC = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)[eE][+-]?\d+$")
_TYPE_NAMES = {
    "integer": "an integer",
    "number": "a number",
    "string": "a string",
    "boolean": "true or false",
    "array": "a list",
    "object": "a mapping",
    "null": "null",
}


def did_you_mean(word: str, choices: Iterable[str]) -> str:
    """``" (did you mean 'x'?)"`` for the closest choice, or ``""`` when none is close."""
    close = difflib.get_close_matches(str(word), [str(c) for c in choices], n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def unknown_name(where: str, kind: str, name: str, known: Sequence[str]) -> str:
    """The line for a reference to a name that is not declared (a dataset, a model, a hook)."""
    listed = ", ".join(known) if known else "none declared"
    return f"{where}: unknown {kind} {name!r}{did_you_mean(name, known)}; known: {listed}"


def key_path(prefix: str, path: Iterable[Any]) -> str:
    """``experiments.saes`` + ``["sweeps", "relu", 0]`` -> ``experiments.saes.sweeps.relu[0]``."""
    out = prefix
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out = f"{out}.{part}" if out else str(part)
    return out or "(top level)"


def read_numbers(value: Any) -> Any:
    """Turn `3e-3`-style strings into numbers, in place through mappings and lists (an integral
    one without a dot, `1e5`, becomes an int). No config value is meant as such a string: names
    are slugs and hooks start with a letter."""
    items = (
        value.items()
        if isinstance(value, dict)
        else enumerate(value)
        if isinstance(value, list)
        else ()
    )
    for key, item in list(items):
        if isinstance(item, str) and _SCIENTIFIC.match(item):
            number = float(item)
            mantissa = item.lower().split("e")[0]
            value[key] = int(number) if number.is_integer() and "." not in mantissa else number
        else:
            read_numbers(item)
    return value


def schema_problems(instance: dict[str, Any], validator, prefix: str = "") -> list[str]:
    """Every schema error of ``instance`` as one line (the validator may fill defaults in)."""
    lines: list[str] = []
    for error in _leaves(validator.iter_errors(instance)):
        lines += _describe(error, prefix)
    return list(dict.fromkeys(lines))


def _leaves(errors) -> Iterable:
    """anyOf/oneOf errors carry the real ones in their context: report the best branch's."""
    from jsonschema.exceptions import best_match

    for error in errors:
        if error.context:
            yield from _leaves([best_match(error.context)])
        else:
            yield error


def allowed(schema: dict[str, Any]) -> str:
    """What a schema accepts, in words: ``an integer >= 1``, ``one of float32, float16``."""
    if "description" in schema:
        return str(schema["description"])
    if "enum" in schema:
        return "one of " + ", ".join(repr(v) for v in schema["enum"])
    if "const" in schema:
        return f"{schema['const']!r}"
    kinds = schema.get("type")
    kinds = kinds if isinstance(kinds, list) else [kinds] if kinds else []
    words = " or ".join(_TYPE_NAMES.get(k, k) for k in kinds) or "a value"
    bounds = [
        f"{symbol} {schema[key]}"
        for key, symbol in (
            ("minimum", ">="),
            ("exclusiveMinimum", ">"),
            ("maximum", "<="),
            ("exclusiveMaximum", "<"),
        )
        if key in schema
    ]
    if "minItems" in schema or "maxItems" in schema:
        lo, hi = schema.get("minItems"), schema.get("maxItems")
        bounds.append(f"of {lo} items" if lo == hi else f"of {lo or 0}..{hi or 'any'} items")
    if "pattern" in schema:
        bounds.append(f"matching {schema['pattern']}")
    return " ".join([words, *bounds])


def _describe(error, prefix: str) -> list[str]:
    where = key_path(prefix, error.absolute_path)
    kind, value, schema = error.validator, error.instance, error.schema
    if kind == "additionalProperties" and isinstance(value, dict):
        known = list(schema.get("properties", {}))
        extra = [k for k in value if k not in known]
        return [
            f"{key_path(where if where != '(top level)' else '', [k])}: unknown key"
            f"{did_you_mean(k, known)}; allowed: {', '.join(known)}"
            for k in extra
        ]
    if kind == "required":
        missing = [k for k in error.validator_value if k not in value]
        return [
            f"{key_path(where if where != '(top level)' else '', [k])}: required key is missing"
            for k in missing
        ]
    if "propertyNames" in error.schema_path:  # a mapping key (a dataset's name) is bad
        return [f"{key_path(where, [value])}: invalid name; allowed: {allowed(schema)}"]
    if kind == "pattern":
        return [f"{where}: {value!r} is not valid; allowed: {allowed(schema)}"]
    if kind == "type":
        wanted = allowed({"type": error.validator_value})
        return [f"{where}: {value!r} is not {wanted}; allowed: {allowed(schema)}"]
    if kind in ("enum", "const"):
        choices = schema.get("enum", [schema.get("const")])
        return [
            f"{where}: {value!r} is not allowed{did_you_mean(value, choices)}; "
            f"allowed: {', '.join(repr(c) for c in choices)}"
        ]
    return [f"{where}: {error.message}; allowed: {allowed(schema)}"]
