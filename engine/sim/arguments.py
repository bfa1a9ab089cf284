"""Arguments for a tool call, generated from the tool's JSON Schema: predictable, valid values.

The rules (docs/personas.md, "Generated arguments"), for each schema, first that applies:
`const`; `default`; the first of `examples`; the first of `enum`; then by type: an object gets
every declared property (required or not) in order; an array gets `minItems` items (at least 1,
at most `maxItems`); an integer or number is the middle of [minimum, maximum] (rounded down for
integers, then to a `multipleOf`), or the one bound given, or 1; a string has a sample value for its
`format` (date, date-time, time, email, uri, uuid, hostname, ipv4, ipv6, duration) or reads
``"simulated <property name>"``, fitted to minLength/maxLength; a boolean is true; null is null.
`anyOf`/`oneOf` take their first non-null choice, `allOf` merges its parts, a type list its first
non-null type, and `$ref` follows local references (`#/...`). `pattern` is not honoured.
"""

from __future__ import annotations

import math
from typing import Any

__all__ = ["generate_arguments", "generate"]

MAX_DEPTH = 12  # nesting (and $ref hops) beyond this yields null instead of recursing

_FORMATS = {
    "date": "2025-01-15",
    "date-time": "2025-01-15T10:00:00Z",
    "time": "10:00:00",
    "email": "candidate@example.com",
    "idn-email": "candidate@example.com",
    "uri": "https://example.com/",
    "url": "https://example.com/",
    "iri": "https://example.com/",
    "uri-reference": "https://example.com/",
    "uuid": "00000000-0000-4000-8000-000000000001",
    "hostname": "example.com",
    "idn-hostname": "example.com",
    "ipv4": "192.0.2.1",
    "ipv6": "2001:db8::1",
    "duration": "PT5M",
}


def generate_arguments(parameters: Any) -> dict[str, Any]:
    """Arguments for a tool whose `parameters` schema is given (an object schema; anything else: {})."""
    value = generate(parameters, "arguments", parameters, 0) if isinstance(parameters, dict) else {}
    return value if isinstance(value, dict) else {}


def generate(schema: Any, name: str, root: Any, depth: int) -> Any:
    """A value valid for `schema` (see the module docstring); `name` is the property's name."""
    if not isinstance(schema, dict) or depth > MAX_DEPTH:
        return None
    schema = _resolved(schema, root, depth)
    for key in ("const", "default"):
        if key in schema:
            return schema[key]
    if isinstance(schema.get("examples"), list) and schema["examples"]:
        return schema["examples"][0]
    if isinstance(schema.get("enum"), list) and schema["enum"]:
        return schema["enum"][0]
    for key in ("anyOf", "oneOf"):
        choices = schema.get(key)
        if isinstance(choices, list) and choices:
            real = [c for c in choices if not (isinstance(c, dict) and c.get("type") == "null")] or choices
            return generate(real[0], name, root, depth + 1)
    kind = _type(schema)
    if kind == "object":
        properties = schema.get("properties")
        items = properties.items() if isinstance(properties, dict) else ()
        return {key: generate(sub, key, root, depth + 1) for key, sub in items}
    if kind == "array":
        return _array(schema, name, root, depth)
    if kind == "integer":
        return _integer(schema)
    if kind == "number":
        return _number(schema)
    if kind == "boolean":
        return True
    if kind == "null":
        return None
    return _string(schema, name)


def _resolved(schema: dict[str, Any], root: Any, depth: int) -> dict[str, Any]:
    """Follow `$ref` and merge `allOf`, boundedly."""
    hops = 0
    while isinstance(schema.get("$ref"), str) and hops <= MAX_DEPTH - depth:
        target = _pointer(root, schema["$ref"])
        if not isinstance(target, dict):
            break
        schema = {**target, **{k: v for k, v in schema.items() if k != "$ref"}}
        hops += 1
    parts = schema.get("allOf")
    if isinstance(parts, list):
        merged: dict[str, Any] = {k: v for k, v in schema.items() if k != "allOf"}
        for part in parts:
            if isinstance(part, dict):
                part = _resolved(part, root, depth + 1)
                props = {**(merged.get("properties") or {}), **(part.get("properties") or {})}
                merged = {**part, **merged, "properties": props} if props else {**part, **merged}
        schema = merged
    return schema


def _pointer(root: Any, ref: str) -> Any:
    if not ref.startswith("#"):
        return None
    node = root
    for part in filter(None, ref[1:].split("/")):
        part = part.replace("~1", "/").replace("~0", "~")
        if isinstance(node, dict):
            node = node.get(part)
        elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        else:
            return None
    return node


def _type(schema: dict[str, Any]) -> str:
    kind = schema.get("type")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), kind[0] if kind else None)
    if isinstance(kind, str):
        return kind
    if "properties" in schema:
        return "object"
    if "items" in schema or "prefixItems" in schema:
        return "array"
    return "string"


def _array(schema: dict[str, Any], name: str, root: Any, depth: int) -> list[Any]:
    low = _int(schema.get("minItems"), 1)
    high = _int(schema.get("maxItems"), max(low, 1))
    count = min(max(low, 1), high)
    given = schema.get("prefixItems")
    prefix: list[Any] = given if isinstance(given, list) else []
    items = schema.get("items")
    item_name = name[:-1] if name.endswith("s") and len(name) > 1 else name
    out = [generate(s, item_name, root, depth + 1) for s in prefix[:count]]
    if len(out) < count and isinstance(items, dict):
        enum = items.get("enum")
        if schema.get("uniqueItems") and isinstance(enum, list):
            out += [v for v in enum if v not in out][: count - len(out)]
        while len(out) < count:
            out.append(generate(items, item_name, root, depth + 1))
    return out


def _bounds(schema: dict[str, Any]) -> tuple[float | None, bool, float | None, bool]:
    """(low, low is exclusive, high, high is exclusive), for draft 4 (boolean) and later (number) forms."""
    low, high = _num(schema.get("minimum")), _num(schema.get("maximum"))
    low_x = high_x = False
    ex_low, ex_high = schema.get("exclusiveMinimum"), schema.get("exclusiveMaximum")
    if isinstance(ex_low, bool):
        low_x = ex_low and low is not None
    elif _num(ex_low) is not None and (low is None or _num(ex_low) >= low):  # type: ignore[operator]
        low, low_x = _num(ex_low), True
    if isinstance(ex_high, bool):
        high_x = ex_high and high is not None
    elif _num(ex_high) is not None and (high is None or _num(ex_high) <= high):  # type: ignore[operator]
        high, high_x = _num(ex_high), True
    return low, low_x, high, high_x


def _integer(schema: dict[str, Any]) -> int:
    low, low_x, high, high_x = _bounds(schema)
    lo = None if low is None else (math.floor(low) + 1 if low_x or low != math.floor(low) else int(low))
    hi = None if high is None else (math.ceil(high) - 1 if high_x or high != math.ceil(high) else int(high))
    if lo is not None and hi is not None:
        value = (lo + hi) // 2 if lo <= hi else lo
    else:
        value = lo if lo is not None else hi if hi is not None else 1
    step = _num(schema.get("multipleOf"))
    if step and step > 0 and step == int(step):
        m = int(step)
        up = -(-value // m) * m
        down = (value // m) * m
        value = up if hi is None or up <= hi else down
    return value


def _number(schema: dict[str, Any]) -> float:
    low, low_x, high, high_x = _bounds(schema)
    if low is not None and high is not None:
        value = (low + high) / 2
    elif low is not None:
        value = low + (0.5 if low_x else 0.0)
    elif high is not None:
        value = high - (0.5 if high_x else 0.0)
    else:
        value = 1.0
    step = _num(schema.get("multipleOf"))
    if step and step > 0:
        value = math.floor(value / step) * step
        if low is not None and (value < low or (low_x and value == low)):
            value += step
    return float(value)


def _string(schema: dict[str, Any], name: str) -> str:
    fmt = schema.get("format")
    text = _FORMATS.get(fmt, "") if isinstance(fmt, str) else ""
    if not text:
        text = "simulated " + name.replace("_", " ").strip() if name else "simulated"
    low, high = _int(schema.get("minLength"), 0), schema.get("maxLength")
    if len(text) < low:
        text += "x" * (low - len(text))
    if isinstance(high, int) and not isinstance(high, bool) and high >= 0:
        text = text[:high]
    return text


def _num(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return float(value)


def _int(value: Any, fallback: int) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= 10_000 else fallback
