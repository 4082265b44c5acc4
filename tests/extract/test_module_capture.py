"""Any module's output at the vision and query tokens (`models.NAME.modules`), against hooks of its own on
a plain forward, for every architecture, batched with left padding and one at a time; and as a user
configures it: stored, read by name, refused before any weights load when a glob names nothing."""

from __future__ import annotations

from fnmatch import fnmatchcase

import numpy as np
import pytest
import torch

from halp.extract.engine import Extractor
from halp.store import open_embeddings
from tests.conftest import ARCHS, extract_eight, halp, set_params

TOL = 1e-5


def decoder_modules(loaded, kind: str) -> dict:
    """Every decoder block's `kind` submodule (mlp, self_attn), by name."""
    glob = f"{loaded.adapter.decoder_blocks}.*.{kind}"
    return {name: m for name, m in loaded.model.named_modules() if fnmatchcase(name, glob)}


@torch.inference_mode()
def reference(loaded, modules: dict, single, positions: tuple[int, int]) -> dict[str, np.ndarray]:
    """Each module's whole output [S, D] from a plain forward of one sample, at (VT, QT)."""
    outputs, handles = {}, []
    for name, module in modules.items():

        def keep(module, args, output, name=name):
            outputs.setdefault(name, output[0] if isinstance(output, tuple) else output)

        handles.append(module.register_forward_hook(keep))
    try:
        loaded.model(**single)
    finally:
        for handle in handles:
            handle.remove()
    return {name: out[0, list(positions)].float().numpy() for name, out in outputs.items()}


@pytest.mark.parametrize("arch", ARCHS)
def test_module_outputs_equal_a_plain_forward_batched_and_alone(arch, load_tiny, mixed_batch):
    loaded = load_tiny(arch)
    modules = decoder_modules(loaded, "mlp") | decoder_modules(loaded, "self_attn")  # a tuple's first
    assert len(modules) > loaded.n_blocks
    extractor = Extractor(loaded, [0], max_new_tokens=2, top_k=5, modules=modules)
    images, questions = mixed_batch
    batched = extractor.run(extractor.prepare(images, questions))
    assert set(batched.modules) == set(modules)
    for i, (image, question) in enumerate(zip(images, questions, strict=True)):
        single = extractor.prepare([image], [question])
        alone = extractor.run(single)
        positions = (int(batched.vision_token_pos[i]), int(batched.query_token_pos[i]))
        expected = reference(loaded, modules, single, positions)
        for name in modules:
            assert batched.modules[name].shape[1] == 2
            np.testing.assert_allclose(
                batched.modules[name][i], expected[name], atol=TOL, rtol=0, err_msg=name
            )
            np.testing.assert_allclose(alone.modules[name][0], expected[name], atol=TOL, rtol=0, err_msg=name)


def test_a_module_outside_the_decoder_is_named_in_the_error(load_tiny, mixed_batch):
    loaded = load_tiny("qwen2_vl")
    extractor = Extractor(
        loaded,
        [0],
        max_new_tokens=2,
        top_k=5,
        modules={"model.visual.blocks.0": loaded.model.model.visual.blocks[0]},
    )
    with pytest.raises(
        RuntimeError, match=r"module model.visual.blocks.0's output is \(.*capture modules of the"
    ):
        extractor.run(extractor.prepare(*mixed_batch))


def test_modules_are_stored_read_by_name_and_a_glob_naming_nothing_stops_before_loading(workspace):
    model = "qwen2_vl"
    folder = extract_eight(workspace, model)
    plain = open_embeddings(folder)
    assert plain.modules == []
    plain_hash, plain_query = plain.attrs["config_hash"], plain.get("query_token", 3)

    set_params(workspace, {f"models.{model}.modules": ["model.language_model.layer.*.mlp"]})
    refused = halp("extract", "--model", model, cwd=workspace, check=False)
    assert refused.returncode == 2
    assert "'model.language_model.layer.*.mlp' (close: model.language_model.layers.*.mlp" in refused.stderr
    assert "Loading weights" not in refused.stderr and "halp modules --model qwen2_vl" in refused.stderr

    glob = "model.language_model.layers.*.mlp"
    set_params(workspace, {f"models.{model}.modules": [glob, "model.language_model.layers.3.mlp"]})
    halp("extract", "--model", model, cwd=workspace)
    emb = open_embeddings(folder)
    assert emb.attrs["config_hash"] != plain_hash
    assert emb.modules == [f"model.language_model.layers.{k}.mlp" for k in range(4)]  # each module once
    last = emb.module("model.language_model.layers.3.mlp")
    assert last.shape == (8, emb.attrs["hidden_size"])
    assert not np.array_equal(last, emb.module("model.language_model.layers.3.mlp", "vision_token"))
    np.testing.assert_array_equal(emb.get("query_token", 3), plain_query)  # the rest as without
    with pytest.raises(KeyError, match=f"no output of module 'lm_head'.*models.{model}.modules"):
        emb.module("lm_head")
