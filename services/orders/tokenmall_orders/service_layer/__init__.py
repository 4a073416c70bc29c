"""Use cases of the orders service: commands, their handlers and read-side queries."""
