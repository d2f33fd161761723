"""Write a seeded synthetic demo dataset (ISIC-like or HeLa-like) that the bundles can read.

Examples::

    python data_scripts/make_demo_data.py isic data/isic_demo --num-train 200 --num-val 20 --num-test 40 --size 64
    python data_scripts/make_demo_data.py hela data/hela_demo --size 256 --labeled-fraction 0.1 --seed 0

The same command is installed as ``monai-im-demo-data``.
"""

from __future__ import annotations

from monai_im.data.synthetic import main

if __name__ == "__main__":
    raise SystemExit(main())
