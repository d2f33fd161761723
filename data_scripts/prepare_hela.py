#!/usr/bin/env python
"""Prepare the HeLa brightfield dataset (alive, dead, position) for monai_im; see --help.

Examples::

    # the release archive downloaded by hand from the authors' Google Drive link
    python data_scripts/prepare_hela.py datasets/hela --archive downloads/hela.zip

    # the release already extracted (folders train_full/, val/, test/ somewhere inside)
    python data_scripts/prepare_hela.py datasets/hela --data-dir downloads/hela

The work is done by :mod:`monai_im.datasets.prepare_hela`.
"""

from __future__ import annotations

from monai_im.datasets.prepare_hela import main

if __name__ == "__main__":
    raise SystemExit(main())
