"""One tensor's data on the wire: JSON ``data`` lists and the binary tensor extension.

Binary data is little-endian, row-major; a BYTES tensor is its elements in order, each a
4-byte little-endian length followed by that many bytes."""

from __future__ import annotations

import struct

import numpy as np

from runtime.errors import InvalidInput
from runtime.tensors import NUMPY_TO_V2, V2_TO_NUMPY

_LENGTH = struct.Struct("<I")
_MAX_NESTING = 64
# JSON value kinds (numpy's, after np.asarray on the list) that each target kind accepts.
_JSON_KINDS = {"f": "fiu", "i": "iu", "u": "iu", "b": "b"}


def wire_dtype(datatype: str) -> np.dtype:
    """Little-endian numpy dtype of a fixed-size v2 datatype."""
    return V2_TO_NUMPY[datatype].newbyteorder("<")


def from_json(name: str, datatype: str, data: object, count: int) -> np.ndarray:
    """Flat array of ``count`` elements from a JSON ``data`` value (nested or flat list)."""
    if not isinstance(data, list):
        raise InvalidInput(f"input '{name}': data must be a list, got {type(data).__name__}")
    if datatype == "BYTES":
        return _bytes_from_json(name, data, count)
    target = V2_TO_NUMPY[datatype]
    try:
        values = np.asarray(data)
    except (ValueError, TypeError, OverflowError, RecursionError):
        raise InvalidInput(f"input '{name}': data is not a regular list of numbers") from None
    if values.size != count:
        raise InvalidInput(
            f"input '{name}': shape holds {count} elements but data has {values.size}"
        )
    if count == 0:
        return np.empty(0, dtype=target)
    values = values.reshape(-1)
    if target.kind in "iu" and values.dtype.kind in "fO":
        # numpy turns integers that fit neither int64 nor uint64 together into float64 (or
        # objects); only then are the elements looked at one by one.
        values = _ints_from_json(name, datatype, data)
    if values.dtype.kind not in _JSON_KINDS[target.kind]:
        raise InvalidInput(f"input '{name}': data holds values that are not valid {datatype}")
    if target.kind in "iu":
        info = np.iinfo(target)
        if int(values.min()) < info.min or int(values.max()) > info.max:
            raise InvalidInput(f"input '{name}': data holds values outside the {datatype} range")
    with np.errstate(over="ignore"):  # beyond the float range is +-inf, as in IEEE casts
        return values.astype(target, copy=False)


def _ints_from_json(name: str, datatype: str, data: list) -> np.ndarray:
    items = np.asarray(data, dtype=object).reshape(-1).tolist()
    if not all(type(item) is int for item in items):
        raise InvalidInput(f"input '{name}': data holds values that are not valid {datatype}")
    info = np.iinfo(V2_TO_NUMPY[datatype])
    if min(items) < info.min or max(items) > info.max:
        raise InvalidInput(f"input '{name}': data holds values outside the {datatype} range")
    return np.array(items, dtype=V2_TO_NUMPY[datatype])


def _bytes_from_json(name: str, data: list, count: int) -> np.ndarray:
    items: list[bytes] = []
    stack = [iter(data)]
    while stack:
        for value in stack[-1]:
            if isinstance(value, str):
                try:
                    items.append(value.encode("utf-8"))
                except UnicodeEncodeError:
                    raise InvalidInput(f"input '{name}': data holds an invalid string") from None
            elif isinstance(value, list):
                if len(stack) >= _MAX_NESTING:
                    raise InvalidInput(f"input '{name}': data is nested too deeply")
                stack.append(iter(value))
                break
            else:
                raise InvalidInput(f"input '{name}': BYTES data must be strings")
        else:
            stack.pop()
    if len(items) != count:
        raise InvalidInput(
            f"input '{name}': shape holds {count} elements but data has {len(items)}"
        )
    out = np.empty(count, dtype=object)
    out[:] = items
    return out


def from_binary(
    name: str, datatype: str, buf: memoryview, offset: int, size: int, count: int
) -> np.ndarray:
    """Flat array of ``count`` elements from ``size`` bytes of ``buf`` at ``offset``.

    Fixed-size types are a view into ``buf`` where it is suitably aligned, else a copy."""
    if datatype == "BYTES":
        return _bytes_from_binary(name, buf, offset, size, count)
    dtype = wire_dtype(datatype)
    if size != count * dtype.itemsize:
        raise InvalidInput(
            f"input '{name}': binary_data_size is {size} but {count} {datatype} elements "
            f"take {count * dtype.itemsize} bytes"
        )
    if count == 0:
        return np.empty(0, dtype=V2_TO_NUMPY[datatype])
    if datatype == "BOOL":
        raw = np.frombuffer(buf, dtype=np.uint8, count=count, offset=offset)
        # Any non-zero byte is true; normalise so numpy's bool semantics hold.
        return raw.view(np.bool_) if int(raw.max()) <= 1 else raw != 0
    values = np.frombuffer(buf, dtype=dtype, count=count, offset=offset)
    if not values.flags.aligned:
        values = values.copy()
    if not dtype.isnative:
        values = values.astype(dtype.newbyteorder("="))
    return values


def _bytes_from_binary(
    name: str, buf: memoryview, offset: int, size: int, count: int
) -> np.ndarray:
    end = offset + size
    pos = offset
    out = np.empty(count, dtype=object)
    for i in range(count):
        if pos + 4 > end:
            raise InvalidInput(
                f"input '{name}': binary data ends inside element {i} of {count} "
                f"(binary_data_size {size})"
            )
        (length,) = _LENGTH.unpack_from(buf, pos)
        pos += 4
        if pos + length > end:
            raise InvalidInput(
                f"input '{name}': element {i} claims {length} bytes, more than the "
                f"binary_data_size {size} leaves"
            )
        out[i] = bytes(buf[pos : pos + length])
        pos += length
    if pos != end:
        raise InvalidInput(
            f"input '{name}': binary_data_size is {size} but the {count} BYTES elements "
            f"take {pos - offset}"
        )
    return out


def datatype_of(array: np.ndarray) -> str:
    """v2 datatype of a numpy array (``S``, ``U`` and object arrays are BYTES)."""
    if array.dtype.kind in "SUO":
        return "BYTES"
    datatype = NUMPY_TO_V2.get(array.dtype.newbyteorder("="))
    if datatype is None:
        raise ValueError(f"numpy dtype {array.dtype} has no v2 datatype")
    return datatype


def as_bytes_items(array: np.ndarray) -> list[bytes]:
    """Elements of a BYTES tensor, row-major, as ``bytes`` (``str`` is encoded as UTF-8)."""
    items = []
    for value in array.reshape(-1).tolist():
        if isinstance(value, bytes):
            items.append(value)
        elif isinstance(value, str):
            items.append(value.encode("utf-8", "surrogatepass"))
        else:
            items.append(str(value).encode("utf-8"))
    return items


def bytes_to_binary(items: list[bytes]) -> bytes:
    parts = []
    for item in items:
        parts.append(_LENGTH.pack(len(item)))
        parts.append(item)
    return b"".join(parts)


def fixed_to_binary(array: np.ndarray, datatype: str) -> memoryview:
    """The array's elements as little-endian bytes; no copy when already contiguous LE."""
    flat = np.ascontiguousarray(array, dtype=wire_dtype(datatype)).reshape(-1)
    return flat.view(np.uint8).data
