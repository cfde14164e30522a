"""vtagml: vision transformer adapters for generalizable multitask dense prediction."""

from vtagml.models import VTAGML

__version__ = "0.1.0"
__all__ = ["VTAGML", "__version__"]
