"""A growable column of exact int64 values: list-like for single inputs, an array for settlement.

The engine applies inputs one at a time (an order appends a grant, a refund
changes one balance) and settles the whole population in array passes.  Keeping
per-member and per-grant values in Python lists made every settlement copy them
into arrays and back (a third of a 100,000-member day); an :class:`IntColumn`
keeps them in one NumPy buffer with spare capacity, so appends stay amortised
O(1) and :meth:`IntColumn.view` hands settlement the live values without a copy.

Single values read back as Python ``int`` so the engine's arithmetic on them is
exact and unbounded; a value that does not fit int64 is refused on write
(``OverflowError``), never wrapped — the plan bounds keep every real value far
inside the range.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any, SupportsIndex, overload

import numpy as np
from numpy.typing import NDArray

I64 = NDArray[np.int64]


class IntColumn:
    __slots__ = ("_buf", "_n")

    def __init__(self, values: Iterable[int] | I64 = ()) -> None:
        data = np.asarray(values if isinstance(values, np.ndarray) else list(values))
        self._buf: I64 = np.array(data, dtype=np.int64).reshape(-1)
        self._n = int(self._buf.size)

    # ------------------------------------------------------------ list-like

    def __len__(self) -> int:
        return self._n

    def _index(self, i: SupportsIndex) -> int:
        k = i.__index__()
        if k < 0:
            k += self._n
        if not 0 <= k < self._n:
            raise IndexError("column index out of range")
        return k

    @overload
    def __getitem__(self, i: SupportsIndex) -> int: ...
    @overload
    def __getitem__(self, i: slice) -> list[int]: ...
    def __getitem__(self, i: SupportsIndex | slice) -> int | list[int]:
        if type(i) is int and 0 <= i < self._n:  # the hot path: one member, one grant
            return int(self._buf.item(i))
        if isinstance(i, slice):
            return list(self._buf[: self._n][i].tolist())
        return int(self._buf.item(self._index(i)))

    def __setitem__(self, i: SupportsIndex, value: int) -> None:
        if type(i) is int and 0 <= i < self._n:
            self._buf[i] = value
        else:
            self._buf[self._index(i)] = value

    def append(self, value: int) -> None:
        if self._n == self._buf.size:
            self._grow(self._n + 1)
        self._buf[self._n] = value
        self._n += 1

    def extend(self, values: Iterable[int] | I64) -> None:
        more = np.asarray(values if isinstance(values, np.ndarray) else list(values))
        more = more.astype(np.int64, copy=False).reshape(-1)
        end = self._n + more.size
        if end > self._buf.size:
            self._grow(end)
        self._buf[self._n : end] = more
        self._n = end

    def _grow(self, needed: int) -> None:
        bigger = np.zeros(max(needed, 2 * self._buf.size, 16), dtype=np.int64)
        bigger[: self._n] = self._buf[: self._n]
        self._buf = bigger

    def __iter__(self) -> Iterator[int]:
        return iter(self.tolist())

    def tolist(self) -> list[int]:
        return list(self._buf[: self._n].tolist())

    def __eq__(self, other: object) -> bool:
        if isinstance(other, IntColumn):
            return bool(np.array_equal(self.view(), other.view()))
        if isinstance(other, list):
            return self.tolist() == other
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]  # mutable

    def __repr__(self) -> str:
        return f"IntColumn({self.tolist()!r})"

    # ------------------------------------------------------------ array-like

    def view(self) -> I64:
        """The live values as a read-only array (no copy); invalid after the next append."""
        live = self._buf[: self._n]
        live.flags.writeable = False
        return live

    def __array__(self, dtype: Any = None, copy: bool | None = None) -> I64:
        # np.asarray(column) is the read-only view, not a slow element-by-element build
        live = self.view()
        return live if dtype is None else live.astype(dtype, copy=bool(copy))

    def assign(self, values: I64) -> None:
        """Overwrite every value at once (a settlement's new grant remaining / quota)."""
        if values.shape != (self._n,):
            raise ValueError(f"expected {self._n} values, got shape {values.shape}")
        self._buf[: self._n] = values

    def add_repeated(self, index: I64, amounts: I64) -> None:
        """``self[index[k]] += amounts[k]`` in order, indexes may repeat."""
        np.add.at(self._buf, index, amounts)

    def add_at(self, index: I64, amounts: I64) -> None:
        """``self[index[k]] += amounts[k]`` for unique indexes, in one pass."""
        self._buf[index] += amounts

    # ------------------------------------------------------------ pickling

    def __getstate__(self) -> dict[str, Any]:
        return {"values": self._buf[: self._n].copy()}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self._buf = np.array(state["values"], dtype=np.int64)
        self._n = int(self._buf.size)
