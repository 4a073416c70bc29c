"""The orders service: creates, pays and refunds orders; publishes OrderPaid (OrdersPaid for
a batch) and OrderRefunded."""
