"""``python -m tokenmall_orders``: run the orders service."""

from tokenmall_orders.app import main

main()
