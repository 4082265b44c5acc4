from __future__ import annotations

import pytest

from halp.config import ConfigError, load_params


def test_repository_params_are_valid():
    params = load_params()
    assert set(params.models) == {"qwen2_vl", "qwen2_5_vl", "mllama", "phi4mm"}


def test_every_problem_is_listed_with_its_place(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text(
        "models:\n  m:\n    model: x\n    layers: [0, 1.5]\n"
        "    dtype: float8\n    batch_size: 0\n    colour: red\n"
    )
    with pytest.raises(ConfigError) as err:
        load_params(path)
    message = str(err.value)
    assert "models.m.layers: Value error, fractional layer 1.5 must lie in [0, 1]" in message
    assert "models.m.dtype" in message and "models.m.batch_size" in message
    assert "models.m.colour: Extra inputs are not permitted" in message


def test_missing_params_file(tmp_path):
    with pytest.raises(ConfigError, match="--params"):
        load_params(tmp_path / "nope.yaml")
