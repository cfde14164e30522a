"""vtagml: vision transformer adapters for generalizable multitask dense prediction."""

__version__ = "0.1.0"
