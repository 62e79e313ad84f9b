"""JSON parsing and writing for the codec: orjson, with the standard library only where the
document carries NaN or Infinity, which Python clients (tritonclient included) write as bare
``NaN``/``Infinity`` literals and which strict JSON cannot express."""

from __future__ import annotations

import json

import orjson

from runtime.errors import InvalidInput


def loads(raw: bytes | bytearray | memoryview, what: str) -> object:
    """Parse UTF-8 JSON; ``InvalidInput`` for anything that is not."""
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError as strict_error:
        reason = strict_error
    try:
        text = bytes(raw).decode("utf-8")
    except UnicodeDecodeError as err:
        raise InvalidInput(f"{what} is not valid UTF-8: {err}") from None
    try:
        doc = json.loads(text)
    except (ValueError, RecursionError):
        raise InvalidInput(f"{what} is not valid JSON: {reason}") from None
    try:
        # The standard library lets through what orjson refuses to write later (lone
        # surrogates, very deep nesting); a round trip keeps the two parsers in agreement.
        orjson.dumps(doc)
    except (orjson.JSONEncodeError, RecursionError):
        # an integer past 64 bits, which orjson reads as a float, is read so here too (a
        # callback per integer, only where the round trip failed)
        doc = json.loads(text, parse_int=_int)
        try:
            orjson.dumps(doc)
        except (orjson.JSONEncodeError, RecursionError) as err:
            raise InvalidInput(f"{what} is not valid JSON: {err}") from None
    return doc


_INT_MIN, _UINT_MAX = -(2**63), 2**64 - 1


def _int(text: str) -> int | float:
    """An integer literal as orjson reads it: beyond 64 bits, a float."""
    value = int(text)
    return value if _INT_MIN <= value <= _UINT_MAX else float(text)


def dumps(doc: object, nonfinite: bool) -> bytes:
    """Serialise a document built by the codec (numpy arrays allowed as values).

    ``nonfinite``: the document holds NaN or Infinity, which are written as the literals the
    standard library uses instead of orjson's ``null``."""
    if not nonfinite:
        return orjson.dumps(doc, option=orjson.OPT_SERIALIZE_NUMPY)
    return json.dumps(doc, default=_tolist, separators=(",", ":")).encode("utf-8")


def _tolist(value: object) -> object:
    tolist = getattr(value, "tolist", None)
    if tolist is None:
        raise TypeError(f"cannot serialise {type(value).__name__}")
    return tolist()
