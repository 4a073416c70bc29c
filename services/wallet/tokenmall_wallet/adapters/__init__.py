"""Storage: the wallet's tables and the bulk statements that book the ledger."""
