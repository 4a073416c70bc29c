"""The engine's state as bytes: a versioned, compact format that is not pickle.

A snapshot is ``MAGIC``, a format version (u16), the length of a JSON header (u32),
the header, then binary blocks.  The header is the engine's object tree with the bulk
moved out into the blocks: every NumPy array and :class:`IntColumn`, every long list of
integers and of names, every large mapping of names to integers and of order ids to
orders (one column per field) is a block of raw little-endian values (strings:
NUL-separated UTF-8), zlib-compressed.  At 1,000,000 members that is a few bytes per
member and per order instead of pickle's hundreds, and loading runs no code from the
bytes: only the engine's own classes (an allow-list) are rebuilt, attribute by
attribute.  Objects shared inside the engine (``Engine.points`` is the ledger's
equity column) stay shared: each is written once and referred to after.

Two steps, so that a service can take the snapshot under its lock and pay for the
compression outside it: :func:`capture` copies the state (array copies, no Python
loop per member), :func:`seal` compresses it into bytes; :func:`dumps` does both,
:func:`loads` reverses them.  The engine stays pure: this is bytes in, bytes out.
"""

from __future__ import annotations

import dataclasses
import importlib
import itertools
import json
import operator
import struct
import zlib
from collections import defaultdict
from collections.abc import Callable
from decimal import Decimal
from fractions import Fraction
from typing import Any

import numpy as np

from tokenmall.engine.columns import IntColumn

MAGIC = b"TMSNAP"
VERSION = 1
_HEAD = struct.Struct("<6sHI")  # magic, version, header length
_BULK = 32  # lists and mappings at least this long go to a block
_INT64 = (-(2**63), 2**63 - 1)
# the modules whose classes a snapshot may hold (anything else is refused both ways)
_MODULES = ("tokenmall.engine.",)


# immutable containers: written where they occur, never referred to (nor numbered)
_VALUES = (tuple, set, frozenset)
_VALUE_TAGS = frozenset({"$tuple", "$set", "$fset"})


class SnapshotError(ValueError):
    """Not a snapshot of this format, a newer version, or damaged."""


@dataclasses.dataclass
class Captured:
    """A copied state, not yet compressed: the header tree and the raw blocks."""

    tree: Any
    blocks: list[tuple[str, tuple[int, ...], bytes]]  # dtype, shape, raw bytes

    @property
    def raw_bytes(self) -> int:
        return sum(len(b) for _, _, b in self.blocks)


def dumps(state: object) -> bytes:
    return seal(capture(state))


def capture(state: object) -> Captured:
    return _Writer().capture(state)


def seal(captured: Captured, level: int = 1) -> bytes:
    """Compress the blocks (zlib releases the GIL: run it in a thread)."""
    compressed = [zlib.compress(raw, level) for _, _, raw in captured.blocks]
    header = json.dumps(
        {
            "tree": captured.tree,
            "blocks": [
                [dtype, list(shape), len(c)]
                for (dtype, shape, _), c in zip(captured.blocks, compressed, strict=True)
            ],
        },
        separators=(",", ":"),
        allow_nan=True,
    ).encode()
    return b"".join([_HEAD.pack(MAGIC, VERSION, len(header)), header, *compressed])


def is_snapshot(data: bytes) -> bool:
    return data[: len(MAGIC)] == MAGIC


def loads(data: bytes) -> Any:
    if len(data) < _HEAD.size or not is_snapshot(data):
        raise SnapshotError("not a tokenmall snapshot")
    _, version, length = _HEAD.unpack_from(data)
    if version > VERSION:
        raise SnapshotError(f"snapshot format {version} is newer than this code's {VERSION}")
    try:
        header = json.loads(data[_HEAD.size : _HEAD.size + length])
        at = _HEAD.size + length
        arrays: list[np.ndarray] = []
        for dtype, shape, size in header["blocks"]:
            raw = zlib.decompress(data[at : at + size])
            arrays.append(np.frombuffer(raw, dtype=np.dtype(dtype)).reshape(shape).copy())
            at += size
        if at != len(data):
            raise SnapshotError("trailing bytes after the last block")
        return _Reader(arrays).read(header["tree"])
    except (KeyError, ValueError, TypeError, zlib.error) as exc:
        raise SnapshotError(f"damaged snapshot: {exc}") from exc


def _allowed(cls: type) -> bool:
    return cls.__module__.startswith(_MODULES) or cls is IntColumn


def _attributes(obj: object) -> dict[str, Any]:
    names: list[str] = []
    for klass in type(obj).__mro__:
        slots = klass.__dict__.get("__slots__", ())
        names.extend([slots] if isinstance(slots, str) else slots)
    values = {n: getattr(obj, n) for n in names if n != "__weakref__" and hasattr(obj, n)}
    values.update(getattr(obj, "__dict__", {}))
    return values


def _ints(values: list[Any]) -> bool:
    return all(type(v) is int and _INT64[0] <= v <= _INT64[1] for v in values)


def _is_bool(value: Any) -> bool:
    return value is True or value is False


def _int_array(values: list[Any]) -> np.ndarray | None:
    """``values`` as int64 when they are all ints in range, else None — in NumPy's loop
    (a float, a string, None or a huge int makes another dtype or fails)."""
    if not values or type(values[0]) is not int:
        return None
    try:
        array = np.array(values)
    except (OverflowError, ValueError, TypeError):
        return None
    if array.dtype != np.int64 or array.ndim != 1:
        return None
    if True in map(_is_bool, values):  # NumPy counts bools as ints: keep them apart
        return None
    return array


class _Writer:
    def __init__(self) -> None:
        self.blocks: list[tuple[str, tuple[int, ...], bytes]] = []
        self.seen: dict[int, int] = {}  # id(obj) -> its number (objects written so far)
        self.kept: list[object] = []  # keeps ids unique while writing
        self.busy: set[int] = set()

    def capture(self, state: object) -> Captured:
        return Captured(self.write(state), self.blocks)

    def block(self, array: np.ndarray) -> int:
        array = np.ascontiguousarray(array)
        self.blocks.append((array.dtype.str, tuple(array.shape), array.tobytes()))
        return len(self.blocks) - 1

    def strings(self, values: list[str]) -> int:
        joined = "\0".join(values).encode()
        if any("\0" in v for v in values):
            raise SnapshotError("a name holds a NUL character")
        return self.block(np.frombuffer(joined, dtype=np.uint8))

    def write(self, obj: Any) -> Any:
        if obj is None or isinstance(obj, bool | str):
            return obj
        if type(obj) is int:
            return obj if _INT64[0] <= obj <= _INT64[1] else {"$big": str(obj)}
        if type(obj) is float:
            return {"$f": obj.hex()}  # exact, and inf/nan too
        if isinstance(obj, np.integer):
            return int(obj)
        if isinstance(obj, np.floating):
            return {"$f": float(obj).hex()}
        if isinstance(obj, Fraction):
            return {"$frac": [str(obj.numerator), str(obj.denominator)]}
        if isinstance(obj, Decimal):
            return {"$dec": str(obj)}
        number = self.seen.get(id(obj))
        if number is not None:
            return {"$ref": number}
        if id(obj) in self.busy:
            raise SnapshotError(f"a cycle through a {type(obj).__name__}")
        self.busy.add(id(obj))
        node = self._compound(obj)
        self.busy.discard(id(obj))
        if type(obj) not in _VALUES:
            # numbered after its parts, in the order the reader rebuilds them
            self.seen[id(obj)] = len(self.seen)
            self.kept.append(obj)
        return node

    def _compound(self, obj: Any) -> Any:
        if isinstance(obj, IntColumn):
            return {"$col": self.block(obj.view())}
        if isinstance(obj, np.ndarray):
            if obj.dtype.kind not in "biuf":
                raise SnapshotError(f"an array of {obj.dtype}")
            return {"$arr": self.block(obj)}
        if type(obj) is tuple:
            return {"$tuple": [self.write(v) for v in obj]}
        if type(obj) in (set, frozenset):
            tag = "$set" if type(obj) is set else "$fset"
            return {tag: [self.write(v) for v in sorted(obj)]}
        if type(obj) is list:
            return self._list(obj)
        if type(obj) is defaultdict:
            if obj.default_factory is not int:
                raise SnapshotError("a defaultdict other than defaultdict(int)")
            return {"$ddint": self._mapping(obj)}
        if type(obj) is dict:
            return {"$dict": self._mapping(obj)}
        if isinstance(obj, type) or not _allowed(type(obj)):
            raise SnapshotError(f"a {type(obj).__module__}.{type(obj).__qualname__} in the state")
        cls = type(obj)
        return {
            "$obj": f"{cls.__module__}:{cls.__qualname__}",
            "a": {k: self.write(v) for k, v in sorted(_attributes(obj).items())},
        }

    def _list(self, values: list[Any]) -> Any:
        if len(values) >= _BULK:
            array = _int_array(values)
            if array is not None:
                return {"$ints": self.block(array)}
            if all(type(v) is str for v in values):
                return {"$strs": self.strings(values)}
            if all(type(v) is list for v in values):  # e.g. the grants of each member
                flat = list(itertools.chain.from_iterable(values))
                ints = _int_array(flat) if flat else np.zeros(0, np.int64)
                if ints is not None:
                    lengths = np.fromiter(map(len, values), np.int64, len(values))
                    return {"$ragged": [self.block(lengths), self.block(ints)]}
        return {"$list": [self.write(v) for v in values]}

    def _mapping(self, mapping: dict[Any, Any]) -> Any:
        keys = list(mapping)
        values = list(mapping.values())
        if len(keys) >= _BULK and all(type(k) is str for k in keys):
            array = _int_array(values)
            if array is not None:
                return {"keys": self.strings(keys), "ints": self.block(array)}
            if all(type(v) is type(values[0]) for v in values) and dataclasses.is_dataclass(
                values[0]
            ):
                return {"keys": self.strings(keys), "records": self._records(values)}
        return {"items": [[self.write(k), self.write(v)] for k, v in mapping.items()]}

    def _records(self, records: list[Any]) -> Any:
        """Many dataclass objects of one class (the orders) as one column per field."""
        cls = type(records[0])
        if not _allowed(cls):
            raise SnapshotError(f"a {cls.__qualname__} in the state")
        columns: dict[str, Any] = {}
        for f in dataclasses.fields(cls):
            column = list(map(operator.attrgetter(f.name), records))
            array = _int_array(column)
            if array is not None:
                columns[f.name] = {"$ints": self.block(array)}
            elif all(type(v) is bool for v in column):
                columns[f.name] = {"$bools": self.block(np.asarray(column, np.bool_))}
            elif all(v is None or type(v) is int for v in column) and _ints(
                [v for v in column if v is not None]
            ):
                present = np.asarray([v is not None for v in column], np.bool_)
                filled = np.asarray([0 if v is None else v for v in column], np.int64)
                columns[f.name] = {"$maybe": [self.block(present), self.block(filled)]}
            elif all(type(v) is str for v in column):
                columns[f.name] = {"$strs": self.strings(column)}
            else:
                columns[f.name] = {"$list": [self.write(v) for v in column]}
        return {"class": f"{cls.__module__}:{cls.__qualname__}", "columns": columns}


class _Reader:
    def __init__(self, arrays: list[np.ndarray]) -> None:
        self.arrays = arrays
        self.objects: list[Any] = []  # in the order the writer numbered them

    def strings(self, block: int) -> list[str]:
        raw = self.arrays[block].tobytes()
        return raw.decode().split("\0") if raw else [""]

    def read(self, node: Any) -> Any:
        if node is None or isinstance(node, bool | int | str):
            return node
        if isinstance(node, list) or not isinstance(node, dict) or len(node) == 0:
            raise SnapshotError(f"unexpected node {str(node)[:80]}")
        tag = next(iter(node))
        value = node[tag]
        if tag == "$big":
            return int(value)
        if tag == "$f":
            return float.fromhex(value)
        if tag == "$frac":
            return Fraction(int(value[0]), int(value[1]))
        if tag == "$dec":
            return Decimal(value)
        if tag == "$ref":
            return self.objects[value]
        obj = self._compound(tag, node)
        if tag not in _VALUE_TAGS:
            self.objects.append(obj)
        return obj

    def _compound(self, tag: str, node: dict[str, Any]) -> Any:
        value = node[tag]
        builders: dict[str, Callable[[Any], Any]] = {
            "$col": lambda v: IntColumn(self.arrays[v]),
            "$arr": lambda v: self.arrays[v],
            "$tuple": lambda v: tuple(self.read(x) for x in v),
            "$set": lambda v: {self.read(x) for x in v},
            "$fset": lambda v: frozenset(self.read(x) for x in v),
            "$list": lambda v: [self.read(x) for x in v],
            "$ints": lambda v: self.arrays[v].tolist(),
            "$strs": self.strings,
            "$ragged": self._ragged,
            "$ddint": lambda v: defaultdict(int, self._mapping(v)),
            "$dict": self._mapping,
            "$obj": lambda v: self._object(v, node["a"]),
        }
        build = builders.get(tag)
        if build is None:
            raise SnapshotError(f"unknown node {tag!r}")
        return build(value)

    def _ragged(self, blocks: list[int]) -> list[list[int]]:
        lengths, flat = self.arrays[blocks[0]], self.arrays[blocks[1]].tolist()
        out, at = [], 0
        for n in lengths.tolist():
            out.append(flat[at : at + n])
            at += n
        return out

    def _mapping(self, node: dict[str, Any]) -> dict[Any, Any]:
        if "items" in node:
            return {self.read(k): self.read(v) for k, v in node["items"]}
        keys = self.strings(node["keys"])
        if "ints" in node:
            return dict(zip(keys, self.arrays[node["ints"]].tolist(), strict=True))
        return dict(zip(keys, self._records(node["records"]), strict=True))

    def _records(self, node: dict[str, Any]) -> list[Any]:
        cls = _class(node["class"])
        columns: dict[str, list[Any]] = {}
        for name, column in node["columns"].items():
            tag = next(iter(column))
            if tag == "$bools":
                columns[name] = [bool(x) for x in self.arrays[column[tag]].tolist()]
            elif tag == "$maybe":
                present = self.arrays[column[tag][0]].tolist()
                filled = self.arrays[column[tag][1]].tolist()
                columns[name] = [v if p else None for p, v in zip(present, filled, strict=True)]
            else:
                columns[name] = self._compound(tag, column)
        names = list(columns)
        rows = zip(*columns.values(), strict=True)
        return [cls(**dict(zip(names, row, strict=True))) for row in rows]

    def _object(self, name: str, attributes: dict[str, Any]) -> Any:
        cls = _class(name)
        obj: Any = object.__new__(cls)
        for key, node in attributes.items():
            object.__setattr__(obj, key, self.read(node))  # frozen dataclasses too
        return obj


def _class(name: str) -> type:
    module, _, qualname = name.partition(":")
    if not (module.startswith(_MODULES) or name == f"{IntColumn.__module__}:IntColumn"):
        raise SnapshotError(f"class {name!r} is not the engine's")
    target: Any = importlib.import_module(module)
    for part in qualname.split("."):
        target = getattr(target, part)
    if not isinstance(target, type):
        raise SnapshotError(f"{name!r} is not a class")
    return target
