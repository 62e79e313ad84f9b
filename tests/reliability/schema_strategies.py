"""Hypothesis strategies from the v2 OpenAPI document's schemas (the subset it uses: objects,
arrays, strings, integers, numbers, booleans, ``anyOf`` and ``$ref``, recursion included).

``hints`` add values that a server of a known model recognises (its input name, a datatype
it accepts) beside what the schema alone allows, so generated requests get past the first
check as well as failing it; each hint is keyed by ``"<schema title>.<property>"``.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

from hypothesis import strategies as st

MAX_DEPTH = 3

json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=8)
)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner,
                                                                max_size=4),
    max_leaves=10,
)
"""Any JSON document (what a schema-unaware client might put anywhere)."""


class SchemaStrategies:
    """Strategies for the schemas under ``components.schemas`` of an OpenAPI document."""

    def __init__(self, spec: Mapping[str, Any],
                 hints: Mapping[str, st.SearchStrategy[Any]] | None = None) -> None:
        self.schemas: Mapping[str, Any] = spec["components"]["schemas"]
        self.hints = dict(hints or {})

    def named(self, name: str) -> st.SearchStrategy[Any]:
        return self.of(self.schemas[name])

    def resolve(self, schema: Mapping[str, Any]) -> Mapping[str, Any]:
        while "$ref" in schema:
            schema = self.schemas[schema["$ref"].rsplit("/", 1)[-1]]
        return schema

    def of(self, schema: Mapping[str, Any], depth: int = 0) -> st.SearchStrategy[Any]:
        """Values valid under ``schema``."""
        schema = self.resolve(schema)
        if "anyOf" in schema:
            options = [s for s in schema["anyOf"]
                       if depth < MAX_DEPTH or "$ref" not in s]  # recursion ends at MAX_DEPTH
            return st.one_of([self.of(s, depth + 1) for s in options])
        kind = schema.get("type")
        if kind == "object":
            return self._object(schema, depth)
        if kind == "array":
            return st.lists(self.of(schema.get("items", {}), depth + 1), max_size=4)
        if kind == "string":
            return st.text(max_size=8)
        if kind == "integer":
            return st.integers(-(2**66), 2**66) | st.integers(-2, 16)
        if kind == "number":
            return st.floats(allow_nan=True, allow_infinity=True) | st.integers(-(2**66), 2**66)
        if kind == "boolean":
            return st.booleans()
        return json_values  # no type: anything

    def _object(self, schema: Mapping[str, Any], depth: int) -> st.SearchStrategy[Any]:
        props = schema.get("properties")
        if not props:  # a free-form object (``parameters``)
            hint = self.hints.get(schema.get("title", ""))
            free = st.dictionaries(st.text(max_size=8), json_values, max_size=4)
            return free if hint is None else hint | free
        title = schema.get("title", "")
        required = set(schema.get("required", ()))

        def prop(name: str) -> st.SearchStrategy[Any]:
            own = self.of(props[name], depth + 1)
            hint = self.hints.get(f"{title}.{name}")
            return own if hint is None else hint | own

        return st.fixed_dictionaries(
            {name: prop(name) for name in props if name in required},
            optional={name: prop(name) for name in props if name not in required},
        )

    def locations(self, name: str, depth: int = 3) -> Iterator[tuple[tuple[Any, ...], Any]]:
        """Every place in a document of schema ``name`` (arrays by their first element), as
        (path, schema at that place), up to ``depth`` steps down."""

        def walk(schema: Mapping[str, Any], path: tuple[Any, ...]) -> Iterator[Any]:
            schema = self.resolve(schema)
            if path:
                yield path, schema
            if len(path) >= depth:
                return
            if schema.get("type") == "object":
                for key, sub in schema.get("properties", {}).items():
                    yield from walk(sub, (*path, key))
            elif schema.get("type") == "array" and "anyOf" not in schema.get("items", {}):
                yield from walk(schema.get("items", {}), (*path, 0))

        yield from walk(self.schemas[name], ())
