"""Use cases: booking the engine's postings, holds, trade requests and adjustments."""
