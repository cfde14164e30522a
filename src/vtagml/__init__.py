"""vtagml: vision transformer adapters for generalizable multitask dense prediction."""

from vtagml.models import VTAGML, SavedModel

__version__ = "0.1.0"
__all__ = ["VTAGML", "SavedModel", "__version__"]
