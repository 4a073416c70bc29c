"""The pure rules engine (RULES.md): no I/O, no framework imports.

Used by the simulator (``tokenmall simulate``), the projection and the services.
"""

from tokenmall.engine import events
from tokenmall.engine.core import Engine, ExitRecord, Order, Outputs, Refused, SettlementReport
from tokenmall.engine.ledger import Ledger, Posting
from tokenmall.engine.plan import Plan, PlanError, merge_plan

__all__ = [
    "Engine",
    "ExitRecord",
    "Ledger",
    "Order",
    "Outputs",
    "Plan",
    "PlanError",
    "Posting",
    "Refused",
    "SettlementReport",
    "events",
    "merge_plan",
]
