"""``python -m monai_im.bundle check|options <bundle folder>``: the model zoo's checks of a bundle, offline, and
the list of its options."""

from __future__ import annotations

from monai_im.bundle.checks import main

if __name__ == "__main__":
    raise SystemExit(main())
