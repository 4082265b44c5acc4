from __future__ import annotations

import pytest

from halp.models.layers import resolve_layers

FRACTIONS = [0, 0.25, 0.5, 0.75, 1.0]


@pytest.mark.parametrize(
    ("n_blocks", "expected"),
    [(28, [0, 7, 14, 21, 27]), (40, [0, 10, 20, 30, 39]), (32, [0, 8, 16, 24, 31])],
)
def test_fractions_resolve_against_real_depths(n_blocks, expected):
    assert resolve_layers(FRACTIONS, n_blocks) == expected


def test_negative_and_mixed_specs():
    assert resolve_layers([-1, 0, 0.5, 3], 28) == [0, 3, 14, 27]
    assert resolve_layers([0, 0.0, -4], 4) == [0]


@pytest.mark.parametrize("layer", [28, -29])
def test_out_of_range_names_the_valid_range(layer):
    with pytest.raises(
        ValueError, match=rf"layer {layer} is out of range for m, which has 28 decoder blocks"
    ):
        resolve_layers([layer], 28, "m")
