import pytest

from monai_im.selftrain import StudyProtocol


def schedule(epochs, min_steps, val_interval, batches):
    return StudyProtocol(epochs=epochs, min_steps=min_steps, val_interval=val_interval).schedule(batches)


@pytest.mark.parametrize(
    "epochs, min_steps, val_interval, batches, expected",
    [
        (20, 0, 1, 3, (20, 1)),  # no floor: the configured schedule
        (20, 400, 1, 37, (20, 1)),  # 740 steps already above the floor
        (20, 400, 1, 3, (134, 7)),  # 30 labeled images, batch 8: 60 steps raised to 402
        (20, 400, 2, 3, (134, 13)),  # validation interval scaled with the epochs
        (20, 400, 1, 20, (20, 1)),  # exactly at the floor
        (20, 401, 1, 20, (21, 1)),
    ],
)
def test_min_steps_floor(epochs, min_steps, val_interval, batches, expected):
    got = schedule(epochs, min_steps, val_interval, batches)
    assert got == expected
    assert got[0] * batches >= min_steps


def test_empty_loader_is_refused():
    with pytest.raises(ValueError, match="at least one batch"):
        schedule(20, 400, 1, 0)
