"""Tests of the split between monai_im.datasets.extract and monai_im.datasets.archives (the behaviour is tested in
test_archives.py through the names archives.py re-exports)."""

from __future__ import annotations

import subprocess
import sys

from monai_im.datasets import archives, extract


def test_archives_re_exports_every_extraction_name():
    for name in extract.__all__:
        assert getattr(archives, name) is getattr(extract, name)
        assert name in archives.__all__
    assert issubclass(extract.ArchiveLimitError, extract.UnsafeArchiveError)
    assert issubclass(extract.NotEnoughSpaceError, extract.ArchiveError)


def test_extract_does_not_import_archives():
    code = "import sys, monai_im.datasets.extract; sys.exit('monai_im.datasets.archives' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0
