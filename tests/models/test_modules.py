"""`halp modules`: a model's module names from its config alone, and module globs checked against them."""

from __future__ import annotations

import shutil

import pytest
import yaml

from halp.config import ConfigError, ModelSettings
from halp.models.loading import load_model
from halp.models.modules import matching, model_modules, patterns
from tests.conftest import ARCHS, halp


@pytest.mark.parametrize("arch", ARCHS)
def test_names_from_the_config_are_the_loaded_models_names(tiny_dir, arch):
    settings = ModelSettings(model=str(tiny_dir / arch), layers=[0])
    loaded = load_model(settings).model
    expected = {name: type(module).__name__ for name, module in loaded.named_modules() if name}
    listed = model_modules(settings)
    if arch == "phi4mm":  # loading wraps Linear layers in the vision LoRA (peft): x.base_layer, x.lora_A...
        lora = {name for name in expected if ".base_layer" in name or ".lora_" in name}
        wrapped = {name.removesuffix(".base_layer") for name in lora if name.endswith(".base_layer")}
        assert wrapped, "the vision LoRA is loaded"
        expected = {name: kind for name, kind in expected.items() if name not in lora | wrapped}
        listed = {name: kind for name, kind in listed.items() if name not in wrapped}
    assert listed == expected


def test_halp_modules_reads_no_weights(tmp_path, tiny_dir):
    """A folder holding config.json alone: the names come from it, and a glob naming nothing is refused."""
    folder = tmp_path / "config_only"
    folder.mkdir()
    shutil.copy(tiny_dir / "qwen2_vl" / "config.json", folder)
    params = {
        "models": {"m": {"model": str(folder), "layers": [0]}},
        "guard": {"models": []},
        "lens": {"models": []},
    }
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    listed = halp("modules", "--model", "m", cwd=tmp_path).stdout.splitlines()
    assert "model.language_model.layers.*.mlp  (4 x Qwen2MLP)" in listed
    assert "lm_head  (Linear)" in listed
    matched = halp("modules", "--model", "m", "--match", "*.layers.*.self_attn", cwd=tmp_path).stdout
    assert matched.startswith("*.layers.*.self_attn: 4 modules\n  model.language_model.layers.0.self_attn  (")
    refused = halp("modules", "--model", "m", "--match", "model.layers.*.mlp", cwd=tmp_path, check=False)
    assert refused.returncode == 2
    assert "'model.layers.*.mlp' (close: model.language_model.layers.*.mlp" in refused.stderr


def test_patterns_count_blocks_and_globs_span_dots():
    modules = {
        "model": "M",
        "model.layers": "ModuleList",
        "model.layers.0": "Block",
        "model.layers.0.mlp": "MLP",
        "model.layers.1": "Block",
        "model.layers.1.mlp": "MLP",
        "model.layers.1.mlp.fc": "Linear",
    }
    assert patterns(modules)[2:4] == [("model.layers.*", 2, "Block"), ("model.layers.*.mlp", 2, "MLP")]
    found = matching(modules, ["model.layers.*.mlp", "*.fc"], "m")
    assert found == {
        "model.layers.*.mlp": ["model.layers.0.mlp", "model.layers.1.mlp"],
        "*.fc": ["model.layers.1.mlp.fc"],
    }
    with pytest.raises(ConfigError, match=r"'model\.blocks\.\*\.mlp' \(close: model\.layers\.\*\.mlp"):
        matching(modules, ["model.blocks.*.mlp"], "m")
