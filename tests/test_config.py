from __future__ import annotations

import pandas as pd
import pytest
import torch
import yaml

from halp.config import NONE_CSV, ConfigError, ProbeSettings, load_params
from halp.label.run import read_overrides
from halp.lens.lens_run import read_ground_truth
from halp.models.loading import pick_device
from halp.models.synthetic import BUILDERS
from halp.probe.run import read_breakdown
from tests.conftest import REPO


def test_repository_params_are_valid():
    params = load_params()
    assert set(params.models) == {*BUILDERS, *params.organism.subjects}  # every tiny architecture, organisms
    for name in params.organism.subjects:  # each organism is extracted from the folder it is trained into
        assert params.models[name].model == str(params.organism.models_dir / name)


def test_every_probe_setting_that_moves_a_number_reruns_the_probe_stage():
    """`dvc exp run -S probe.X=...` reruns the probe stage only for settings its `params` lists; one left
    out would leave stale metrics that look current. Paths are its deps and outs; workers move no number."""
    stage = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]["probe"]
    listed = {name.removeprefix("probe.") for name in stage["do"]["params"]}
    unlisted = {"workers", "out_dir", "test_scores_dir", "headline_dir", "control_dir"}
    assert listed == set(ProbeSettings.model_fields) - unlisted


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


def test_yaml_syntax_errors_name_the_file_and_line(tmp_path):
    path = tmp_path / "my-params.yaml"
    path.write_text("models:\n  m:\n    model: x\n    layers: [0, 1\n")
    with pytest.raises(
        ConfigError, match=r'my-params.yaml is not valid YAML(.|\n)*"[^"]*my-params.yaml", line'
    ):
        load_params(path)


@pytest.mark.parametrize("layer", ["true", '"2"', "null"])
def test_layers_must_be_numbers(tmp_path, layer):
    path = tmp_path / "params.yaml"
    path.write_text(f"models:\n  m:\n    model: x\n    layers: [0, {layer}]\n")
    with pytest.raises(ConfigError, match=r"neither a block index \(2, -1\) nor a fraction of depth"):
        load_params(path)


def test_unknown_devices_are_refused_before_loading(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text("models:\n  m:\n    model: x\n    device: gpu\n")
    with pytest.raises(ConfigError, match=r"device 'gpu' is not one of auto, cpu, cuda, cuda:N, mps"):
        load_params(path)


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a GPU")
def test_cuda_without_a_gpu_says_what_to_use():
    with pytest.raises(ConfigError, match=r"device 'cuda' is not available here .*use device: auto or cpu"):
        pick_device("cuda")


def test_unknown_model_names_the_params_file_in_use(tmp_path):
    path = tmp_path / "other.yaml"
    path.write_text("models:\n  m:\n    model: x\n")
    with pytest.raises(ConfigError, match=r"unknown model name 'n': .*other.yaml configures m"):
        load_params(path).model("n")


def test_a_layer_listed_twice_is_refused_and_1_is_not_1_0(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text("models:\n  m:\n    model: x\n    layers: [0, 2, 0.5, 2, 0.5]\n")
    with pytest.raises(ConfigError, match=r"layer\(s\) \[0.5, 2\] listed more than once"):
        load_params(path)
    path.write_text("models:\n  m:\n    model: x\n    layers: [1, 1.0]\n")  # block 1 and the last block
    assert load_params(path).models["m"].layers == [1, 1.0]


@pytest.mark.parametrize("section", ["guard", "lens"])
def test_a_model_name_the_models_map_lacks_is_refused_by_name(tmp_path, section):
    path = tmp_path / "params.yaml"
    path.write_text(f"models:\n  m:\n    model: x\n{section}:\n  models: [m, qwen3]\n")
    with pytest.raises(
        ConfigError, match=rf"{section}.models names qwen3, .* \(it has m\): add models.qwen3"
    ):
        load_params(path)


@pytest.mark.parametrize("setting", ["label.overrides", "probe.breakdown", "lens.ground_truth"])
def test_null_is_refused_where_dvc_depends_on_the_path(tmp_path, setting):
    """DVC fails on null in a dependency (an AssertionError in every command): the message says what works."""
    section, key = setting.split(".")
    path = tmp_path / "params.yaml"
    path.write_text(f"models:\n  m:\n    model: x\n{section}:\n  {key}: null\n")
    with pytest.raises(ConfigError, match=rf"{setting}: .*null cannot mean none.*set it to data/none.csv"):
        load_params(path)


def test_an_empty_csv_or_a_header_alone_means_none(tmp_path):
    header_alone = tmp_path / "reviewed.csv"
    header_alone.write_text("question_id,label\n\n")
    assert (REPO / NONE_CSV).stat().st_size == 0
    for path in (REPO / NONE_CSV, header_alone):
        assert read_overrides(path) is None
        assert read_breakdown(path, pd.Series(["q1"])) is None
        assert read_ground_truth(path) is None
    with pytest.raises(FileNotFoundError, match=r"probe.breakdown .*gone.csv not found: .*data/none.csv"):
        read_breakdown(tmp_path / "gone.csv", pd.Series(["q1"]))
