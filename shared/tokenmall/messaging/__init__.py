"""Transactional outbox and idempotent inbox shared by every service.

- ``tables.define(metadata)`` adds the ``outbox`` and ``inbox`` tables to a service's schema.
- ``UnitOfWork`` wraps one local transaction: the effect, the inbox row of the message
  that caused it and the outbox rows of the events it raised commit together or not at all.
- ``ParkingLot`` keeps events that arrived before their dependency (``Missing``).
- ``OutboxRelay`` publishes unpublished outbox rows in id order and marks them.
"""

from tokenmall.messaging.lease import Lease, LeaseLost
from tokenmall.messaging.parking import Missing, ParkedEvent, ParkingLot
from tokenmall.messaging.relay import KafkaPublisher, OutboxRelay, Outgoing, Publisher
from tokenmall.messaging.tables import MessagingTables, define
from tokenmall.messaging.uow import UnitOfWork

__all__ = [
    "KafkaPublisher",
    "Lease",
    "LeaseLost",
    "MessagingTables",
    "Missing",
    "OutboxRelay",
    "Outgoing",
    "ParkedEvent",
    "ParkingLot",
    "Publisher",
    "UnitOfWork",
    "define",
]
