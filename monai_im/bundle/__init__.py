"""Bundle plumbing that lives in the installed package, so that a bundle folder runs wherever it is copied.

- :func:`bundle_root`: the folder of the bundle being run (the parent of its ``configs/``), found from
  the running ``monai.bundle`` workflow; bundles use it as their ``bundle_root`` default.
- :func:`check_bundle` (also ``python -m monai_im.bundle check <bundle folder>``): the model zoo's checks,
  offline: ``verify_metadata`` against the metadata schema shipped here, ``verify_net_in_out``, a
  TorchScript ``ckpt_export`` round trip, and ``check_properties`` of the train and inference workflows.
"""

from __future__ import annotations

from monai_im.bundle.checks import METADATA_SCHEMA, bundle_root, check_bundle

__all__ = ["METADATA_SCHEMA", "bundle_root", "check_bundle"]
