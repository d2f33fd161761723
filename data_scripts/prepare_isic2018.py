#!/usr/bin/env python
"""Prepare ISIC 2018 Task 1 (lesion segmentation) for monai_im; run with --help for the options.

Examples::

    # archives already downloaded (or extracted) into ./isic_archives
    python data_scripts/prepare_isic2018.py datasets/isic2018 --archives-dir isic_archives

    # download the six official archives (resumable, about 13 GB), then prepare
    python data_scripts/prepare_isic2018.py datasets/isic2018 --download --archives-dir isic_archives

The work is done by :mod:`monai_im.datasets.prepare_isic2018`.
"""

from __future__ import annotations

from monai_im.datasets.prepare_isic2018 import main

if __name__ == "__main__":
    raise SystemExit(main())
