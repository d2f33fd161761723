from __future__ import annotations

import pytest

from monai_im.utils import as_bool


@pytest.mark.parametrize("value", [True, 1, "true", "True", "YES", "on", "1"])
def test_true_values(value):
    assert as_bool(value) is True


@pytest.mark.parametrize("value", [False, 0, None, "false", "False", "no", "off", "0", ""])
def test_false_values_including_the_command_line_string_false(value):
    assert as_bool(value) is False


@pytest.mark.parametrize("value", ["maybe", 2, [True]])
def test_anything_else_is_refused_by_name(value):
    with pytest.raises(ValueError, match="overwrite must be true or false"):
        as_bool(value, "overwrite")
