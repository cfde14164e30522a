"""Reproduce the demo backbone weights: ``python scripts/pretrain_backbone.py [--out PATH]``.

The recipe lives in :mod:`vtagml.pretrain` (also ``vtagml pretrain``).
"""

from vtagml.pretrain import main

if __name__ == "__main__":
    main()
