"""tokenmall: an event-driven points platform for online malls."""

__version__ = "0.1.0"
