"""Webhooks: operators register HTTPS endpoints per event kind; the events a service
emits become signed deliveries in the same transaction (``WebhookOutbox``), sent by a
dispatcher of their own with retries, a delivery log and redelivery.

- ``tables.define(metadata)``: the four tables, in a hosting service's schema.
- ``Webhooks(tables, kinds, notifications_of)``: set as ``Service.webhooks``; the kit
  then queues in every unit of work, runs the dispatcher and mounts ``routes.router``.
- ``signing.verify(secret, header, body)``: what a receiver calls.
"""

from tokenmall.webhooks.dispatcher import RetryPolicy, WebhookDispatcher
from tokenmall.webhooks.host import Webhooks
from tokenmall.webhooks.signing import SignatureError, signature_header, verify
from tokenmall.webhooks.store import PING, Notification, WebhookOutbox
from tokenmall.webhooks.tables import WebhookTables, define

__all__ = [
    "PING",
    "Notification",
    "RetryPolicy",
    "SignatureError",
    "WebhookDispatcher",
    "WebhookOutbox",
    "WebhookTables",
    "Webhooks",
    "define",
    "signature_header",
    "verify",
]
