"""``python -m monai_im.bundle check <bundle folder>``: the model zoo's checks of a bundle, offline."""

from __future__ import annotations

from monai_im.bundle.checks import main

if __name__ == "__main__":
    raise SystemExit(main())
