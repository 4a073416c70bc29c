"""The batch events' bounds: OrdersPaid and InputsApplied split a long list into
consecutive events, in order, each under its count and byte bounds (and so under the
broker's 1 MB message.max.bytes once encoded) — also for non-ASCII text."""

from __future__ import annotations

from decimal import Decimal

from tokenmall import contracts
from tokenmall.contracts import AppliedInput, PaidOrder, PostingLine


def test_order_batches_split_at_the_bounds() -> None:
    """Past ORDER_BATCH_ORDERS orders or ORDER_BATCH_BYTES of them a batch is several
    events, in order, each under the bounds (and under the broker's 1 MB once encoded)."""
    orders = [
        PaidOrder(order_id=f"o-{i:05d}-" + "x" * 150, member=f"+86138{i:08d}", amount="12.34")
        for i in range(5000)
    ]
    batches = contracts.order_batches(orders, day=3)
    assert [o for b in batches for o in b.orders] == orders
    assert len(batches) > 2 and {b.day for b in batches} == {3}
    for b in batches:
        assert len(b.orders) <= contracts.ORDER_BATCH_ORDERS
        assert len(contracts.encode(b)) <= contracts.ORDER_BATCH_BYTES + 4096
    small = contracts.order_batches(orders[:10], day=None)
    assert len(small) == 1 and small[0].orders == orders[:10]
    many = [PaidOrder(order_id=f"o{i}", member="A", amount="1") for i in range(4500)]
    assert [len(b.orders) for b in contracts.order_batches(many, 1)] == [2000, 2000, 500]


def test_input_batches_split_at_the_bounds() -> None:
    answers = [
        AppliedInput(
            input_id=f"order:o-{i:05d}",
            member=f"+86138{i:08d}",
            accepted=i % 7 != 0,
            reason=None if i % 7 else "会员积分不足，订单被拒绝" * 3,
            postings=[
                PostingLine(
                    asset="cny",
                    debit="external",
                    credit=f"m:+86138{i:08d}",
                    amount=Decimal("12345.67"),
                    kind="order",
                )
            ]
            * (1 + i % 5),
            facts=[{"type": "QuotaGranted", "order_id": f"o-{i:05d}", "quota": 10**12, "x": "积分"}]
            * (i % 3),
        )
        for i in range(6000)
    ]
    batches = contracts.applied_batches(answers, day=4)
    assert [a for b in batches for a in b.inputs] == answers
    assert len(batches) > 3 and {b.day for b in batches} == {4}
    for b in batches:
        assert b.key == contracts.INPUT_BATCHES_KEY
        assert len(b.inputs) <= contracts.INPUT_BATCH_INPUTS
        assert len(contracts.encode(b)) <= contracts.INPUT_BATCH_BYTES + 4096
    plain = [AppliedInput(input_id=f"order:{i}", accepted=True) for i in range(4100)]
    assert [len(b.inputs) for b in contracts.applied_batches(plain, 1)] == [2000, 2000, 100]
    assert contracts.applied_batches([], 1) == []
