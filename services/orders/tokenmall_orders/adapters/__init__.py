"""Adapters of the orders service: its tables and the wallet's hold API."""
