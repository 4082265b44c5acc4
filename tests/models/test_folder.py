"""A broken local model folder is named, file by file, before any weights load or any sample runs."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from halp.config import ModelSettings
from halp.models.folder import ModelFolderError
from halp.models.loading import load_model
from tests.conftest import halp, set_params


@pytest.fixture()
def model_copy(tmp_path, tiny_dir) -> Path:
    return Path(shutil.copytree(tiny_dir / "qwen2_5_vl", tmp_path / "model"))


def load(folder: Path):
    return load_model(ModelSettings(model=str(folder)))


def test_a_whole_folder_loads(model_copy):
    assert load(model_copy).n_blocks > 0


@pytest.mark.parametrize(
    ("missing", "named"),
    [
        ("chat_template.jinja", "chat_template.jinja"),
        ("tokenizer.json", "tokenizer.json"),
        ("processor_config.json", "processor_config.json"),
        ("model.safetensors", "model.safetensors"),
    ],
)
def test_a_missing_file_is_named(model_copy, missing, named):
    (model_copy / missing).unlink()
    with pytest.raises(
        ModelFolderError, match=rf"{model_copy} has (no|none of) .*{named}.*Copy the whole folder"
    ):
        load(model_copy)


def test_an_older_hub_layout_is_accepted(model_copy):
    """preprocessor_config.json and a template inside tokenizer_config.json are the hub's older layout."""
    template = (model_copy / "chat_template.jinja").read_text()
    (model_copy / "chat_template.jinja").unlink()
    tokenizer_config = json.loads((model_copy / "tokenizer_config.json").read_text())
    (model_copy / "tokenizer_config.json").write_text(
        json.dumps(tokenizer_config | {"chat_template": template})
    )
    load(model_copy)


@pytest.mark.parametrize("keep", [4, 100, 0.6])
def test_truncated_weights_are_named_with_their_size(model_copy, keep):
    weights = model_copy / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: int(len(data) * keep) if isinstance(keep, float) else keep])
    with pytest.raises(ModelFolderError, match=rf"{weights} are incomplete .*cut off. Copy or download"):
        load(model_copy)


def test_a_missing_shard_is_named(model_copy):
    index = {"metadata": {}, "weight_map": {"lm_head.weight": "model-00002-of-00002.safetensors"}}
    (model_copy / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(
        ModelFolderError, match=r"names model-00002-of-00002\.safetensors, which is not there"
    ):
        load(model_copy)


def test_broken_json_is_named(model_copy):
    (model_copy / "processor_config.json").write_text('{"image_processor": ')
    with pytest.raises(ModelFolderError, match=r"processor_config\.json is not valid JSON"):
        load(model_copy)


def test_extract_stops_before_the_run_and_writes_nothing(workspace, model_copy):
    """Without a chat template every sample used to fail one by one, with rc 0, and again on every run."""
    (model_copy / "chat_template.jinja").unlink()
    set_params(workspace, {"models.qwen2_5_vl.model": str(model_copy)})
    result = halp("extract", "--model", "qwen2_5_vl", cwd=workspace, check=False)
    assert result.returncode != 0
    assert f"model folder {model_copy} has none of chat_template.jinja" in result.stderr
    assert "Traceback" not in result.stderr
    assert not list((workspace / "embeddings").glob("**/*.h5"))
