import numpy as np
import pytest
from monai.transforms import LoadImage

from monai_im.io import save_png


@pytest.mark.parametrize("level", [0, 1, 6, 9])
def test_save_png_is_lossless_at_every_compress_level(tmp_path, level):
    rng = np.random.default_rng(level)
    image = rng.integers(0, 256, size=(3, 24, 16)).astype(np.uint8)  # channel first, MONAI (W, H) order
    path = save_png(tmp_path / f"x{level}.png", image, compress_level=level)
    back = LoadImage(image_only=True, ensure_channel_first=True)(str(path))
    np.testing.assert_array_equal(np.asarray(back), image)


def test_save_png_lower_level_gives_larger_file(tmp_path):
    # a smooth image compresses well, so the level visibly changes the file size
    grid = np.add.outer(np.arange(64), np.arange(64)).astype(np.uint8)
    fast = save_png(tmp_path / "fast.png", grid[None], compress_level=0)
    small = save_png(tmp_path / "small.png", grid[None], compress_level=9)
    assert fast.stat().st_size > small.stat().st_size


@pytest.mark.parametrize("level", [-1, 10])
def test_save_png_rejects_bad_level_and_writes_nothing(tmp_path, level):
    with pytest.raises(ValueError, match="compress_level"):
        save_png(tmp_path / "x.png", np.zeros((1, 8, 8), np.uint8), compress_level=level)
    assert list(tmp_path.iterdir()) == []


def test_atomic_directory_gets_the_permissions_of_a_normal_folder(tmp_path):
    import os
    import stat

    from monai_im.io import atomic_directory

    mask = os.umask(0o022)
    try:
        with atomic_directory(tmp_path / "data") as tmp:
            (tmp / "a.txt").write_text("x")
    finally:
        os.umask(mask)
    assert stat.S_IMODE((tmp_path / "data").stat().st_mode) == 0o755
