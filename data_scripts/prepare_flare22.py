#!/usr/bin/env python
"""Prepare the FLARE22 abdominal CT dataset (13 organs) for monai_im; see --help.

FLARE22 is given out after a registration at https://flare22.grand-challenge.org/ (no download here).

Examples::

    # the training data as released: imagesTr/ + labelsTr/ (or images/ + labels/) and *Unlabeled* folders
    python data_scripts/prepare_flare22.py datasets/flare22 --data-dir downloads/FLARE22/Training

    # 200 of the unlabeled cases, resampled to 1.5 x 1.5 x 2.5 mm
    python data_scripts/prepare_flare22.py datasets/flare22_r --data-dir downloads/FLARE22/Training \\
        --num-unlabeled 200 --spacing 1.5 1.5 2.5

The work is done by :mod:`monai_im.datasets.prepare_flare22`.
"""

from __future__ import annotations

from monai_im.datasets.prepare_flare22 import main

if __name__ == "__main__":
    raise SystemExit(main())
