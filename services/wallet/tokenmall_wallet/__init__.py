"""tokenmall wallet service: the double-entry ledger, balances, holds and the trade gateway."""
