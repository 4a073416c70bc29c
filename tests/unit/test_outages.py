"""What counts as an outage (retried until it passes, never dead-lettered) and what is
the message's fault (retried a few times, then dead-lettered)."""

from __future__ import annotations

import pytest
from aiokafka import errors as kafka
from sqlalchemy import exc as sa_exc

from tokenmall.servicekit import is_outage


@pytest.mark.parametrize(
    "error",
    [
        kafka.KafkaTimeoutError(),  # a metadata request (the partitions of a topic) timed out
        kafka.KafkaConnectionError("broker down"),
        kafka.NotLeaderForPartitionError(),  # retriable: a leader election
        kafka.RequestTimedOutError(),
        sa_exc.OperationalError("SELECT 1", {}, Exception("connection refused")),
        ConnectionResetError(),
        TimeoutError(),
    ],
)
def test_the_broker_or_the_database_not_answering_is_an_outage(error: BaseException) -> None:
    assert is_outage(error)


@pytest.mark.parametrize(
    "error",
    [
        kafka.MessageSizeTooLargeError(),  # the message's own doing: never passes by waiting
        kafka.InvalidTopicError(),
        sa_exc.IntegrityError("INSERT", {}, Exception("duplicate key")),
        ValueError("bad amount"),
        RuntimeError("handler bug"),
    ],
)
def test_what_the_message_caused_is_not_an_outage(error: BaseException) -> None:
    assert not is_outage(error)
