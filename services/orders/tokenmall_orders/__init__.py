"""The orders service: creates, pays and refunds orders; publishes OrderPaid and OrderRefunded."""
