"""Tests of the split between monai_im.data.extract and monai_im.data.archives (the behaviour is tested in
test_archives.py through the names archives.py re-exports)."""

from __future__ import annotations

import subprocess
import sys

from monai_im.data import archives, extract


def test_archives_re_exports_every_extraction_name():
    for name in extract.__all__:
        assert getattr(archives, name) is getattr(extract, name)
        assert name in archives.__all__
    assert issubclass(extract.ArchiveLimitError, extract.UnsafeArchiveError)
    assert issubclass(extract.NotEnoughSpaceError, extract.ArchiveError)


def test_extract_does_not_import_archives():
    code = "import sys, monai_im.data.extract; sys.exit('monai_im.data.archives' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0
