"""Double-entry books (RULES.md §6).

Every movement of value is a posting of one amount of one asset from one account
to another, so for every asset the balances of all accounts always sum to zero:
sources of value (``issuance`` mints, ``external`` brings cash in) simply go
negative.  Member accounts are integer member indexes; platform accounts are names.

Single postings serve the event steps; settlement posts a whole batch at once
(``post_batch``): one aggregated platform leg against many member legs, which is
also the shape the wallet service books (one row per member per day).
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from tokenmall.engine.columns import IntColumn

ASSETS = ("cny", "stable", "equity")

# Platform accounts (RULES §6 names plus the external cash boundary).
EXTERNAL = "external"  # cash that enters or leaves the platform (payments, refunds)
SALES = "sales"
POOL = "pool"  # the equity pool, in cny
TREASURY = "treasury"  # equity points held by the platform
ISSUANCE = "issuance"  # mint (source) and burn (sink) of created value
RETAINED = "retained"
ROUNDING = "rounding"
ADJUSTMENTS = "adjustments"


def pool_account(pool_name: str) -> str:
    """The funding account of a daily pool; it is emptied by each settlement."""
    return f"pool:{pool_name}"


Account = int | str


@dataclass(frozen=True, slots=True)
class Posting:
    asset: str
    debit: Account  # value leaves this account
    credit: Account  # value arrives here
    amount: int  # minor units (cents, or 1e-8 points for equity), > 0
    kind: str  # what moved it: order, refund, sell, release:<kind>, ...
    ref: str = ""


@dataclass(frozen=True, slots=True)
class BatchPosting:
    """One platform leg against many member legs (settlement)."""

    asset: str
    platform: str
    members: NDArray[np.int64]
    amounts: NDArray[np.int64]  # platform -> member, each > 0
    kind: str
    ref: str = ""

    @property
    def total(self) -> int:
        return int(self.amounts.sum(dtype=np.int64)) if self.amounts.size else 0


@dataclass(frozen=True, slots=True)
class ReleaseBatch:
    """A day's releases: one line per member, one column per release kind.

    Column ``kind`` is paid out of platform account ``sources[kind]``; the member
    receives the row total.  This is the one-posting-per-member-per-day shape the
    wallet books.
    """

    asset: str
    members: NDArray[np.int64]  # unique
    columns: dict[str, NDArray[np.int64]]  # kind -> amounts aligned with members
    sources: dict[str, str]  # kind -> platform account
    ref: str = ""

    def row_totals(self) -> NDArray[np.int64]:
        total = np.zeros(self.members.size, dtype=np.int64)
        for amounts in self.columns.values():
            total += amounts
        return total


class InsufficientBalance(ValueError):
    pass


class Ledger:
    def __init__(self) -> None:
        # member balances by index; IntColumns so a settlement adds a day's releases in one pass
        self.members: dict[str, IntColumn] = {a: IntColumn() for a in ASSETS}
        self.platform: dict[str, defaultdict[str, int]] = {a: defaultdict(int) for a in ASSETS}
        self.journal: list[Posting | BatchPosting | ReleaseBatch] | None = None  # [] records

    def add_member(self) -> None:
        for balances in self.members.values():
            balances.append(0)

    def balance(self, asset: str, account: Account) -> int:
        if isinstance(account, int):
            return self.members[asset][account]
        return self.platform[asset][account]

    def post(
        self, asset: str, debit: Account, credit: Account, amount: int, kind: str, ref: str = ""
    ) -> None:
        """Move ``amount`` of ``asset``.  A member balance never goes below zero."""
        if amount == 0:
            return
        if amount < 0:
            raise ValueError("posting amounts are positive; swap debit and credit")
        if isinstance(debit, int):
            balances = self.members[asset]
            if balances[debit] < amount:
                raise InsufficientBalance(f"member balance of {asset} too low")
            balances[debit] -= amount
        else:
            self.platform[asset][debit] -= amount
        if isinstance(credit, int):
            self.members[asset][credit] += amount
        else:
            self.platform[asset][credit] += amount
        if self.journal is not None:
            self.journal.append(Posting(asset, debit, credit, amount, kind, ref))

    def post_batch(self, batch: BatchPosting) -> None:
        if batch.members.size == 0:
            return
        self._add_to_members(batch.asset, batch.members, batch.amounts)
        self.platform[batch.asset][batch.platform] -= batch.total
        if self.journal is not None:
            self.journal.append(batch)

    def post_release(self, batch: ReleaseBatch) -> None:
        if batch.members.size == 0:
            return
        self._add_to_members(batch.asset, batch.members, batch.row_totals())
        for kind, amounts in batch.columns.items():
            self.platform[batch.asset][batch.sources[kind]] -= int(amounts.sum())
        if self.journal is not None:
            self.journal.append(batch)

    def _add_to_members(
        self, asset: str, members: NDArray[np.int64], amounts: NDArray[np.int64]
    ) -> None:
        self.members[asset].add_at(members, amounts)  # members are unique

    def total(self, asset: str) -> int:
        """Sum over every account of ``asset``; zero whenever the books balance."""
        return sum(self.members[asset]) + sum(self.platform[asset].values())
