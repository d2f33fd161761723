"""Bundle plumbing that lives in the installed package, so that a bundle folder runs wherever it is copied.

- :func:`bundle_root`: the folder of the bundle being run (the parent of its ``configs/``), found from
  the running ``monai.bundle`` workflow; bundles use it as their ``bundle_root`` default.
- :func:`check_bundle` (also ``python -m monai_im.bundle check <bundle folder>``): the model zoo's checks,
  offline: ``verify_metadata`` against the metadata schema shipped here, ``verify_net_in_out``, a
  TorchScript ``ckpt_export`` round trip, and ``check_properties`` of the train and inference workflows.
- Checks a bundle's ``initialize`` runs before any work, each refusing in one ``error: ...`` line:
  :func:`check_overrides` (unknown ``--key`` overrides, a config run without the one it is merged on),
  :func:`validate_settings` and :func:`check_unlabeled` (settings that cannot work),
  :func:`check_checkpoint` (a checkpoint that does not fit the bundle's network, or is no checkpoint).
- :func:`format_options` (also ``python -m monai_im.bundle options <bundle folder>``): every option of a
  bundle with its default and meaning, read from its configs.
"""

from __future__ import annotations

from monai_im.bundle.checkpoints import check_checkpoint
from monai_im.bundle.checks import METADATA_SCHEMA, bundle_root, check_bundle
from monai_im.bundle.options import bundle_options, format_options, undocumented
from monai_im.bundle.overrides import check_overrides
from monai_im.bundle.validate import check_unlabeled, validate_settings

__all__ = [
    "METADATA_SCHEMA",
    "bundle_options",
    "bundle_root",
    "check_bundle",
    "check_checkpoint",
    "check_overrides",
    "check_unlabeled",
    "format_options",
    "undocumented",
    "validate_settings",
]
