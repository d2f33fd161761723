"""Write a seeded synthetic demo dataset (ISIC-like, HeLa-like or FLARE-like CT) that the bundles can read.

Examples::

    python data_scripts/make_demo_data.py isic data/isic_demo --num-train 200 --num-val 20 --num-test 40 --size 64
    python data_scripts/make_demo_data.py hela data/hela_demo --size 256 --labeled-fraction 0.1 --seed 0
    python data_scripts/make_demo_data.py flare data/flare_demo --num-train 24 --shape 64 64 48

The 2D kinds are also installed as ``monai-im-demo-data``; ``flare`` takes the options of
``monai_im.datasets.flare_like`` (``--help`` after it lists them).
"""

from __future__ import annotations

import sys

if __name__ == "__main__":
    if sys.argv[1:2] == ["flare"]:
        from monai_im.datasets.flare_like import main as flare_main

        raise SystemExit(flare_main(sys.argv[2:]))
    from monai_im.datasets.synthetic import main

    raise SystemExit(main())
