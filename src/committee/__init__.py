"""committee: test Git commits one by one, each in its own sandbox, and stream what happens live."""

__version__ = "0.1.0"
