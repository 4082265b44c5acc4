"""Every extraction point against an independent reference, batched and one by one, for each architecture."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from halp.config import ConfigError
from halp.extract.engine import Extractor
from halp.models.adapter import resolve
from tests.conftest import ARCHS

LAYERS = [0, 2, 3]  # first, middle and last block of the 4-block tiny models
MAX_NEW = 6
TOL = 1e-4
FIXED_IMAGE_SIZE = {"gemma3", "fast_vlm"}  # every image resized to one size: the same image tokens for all


@pytest.fixture(scope="module", params=ARCHS)
def setup(request, load_tiny, mixed_batch):
    loaded = load_tiny(request.param)
    extractor = Extractor(loaded, LAYERS, max_new_tokens=MAX_NEW, top_k=5)
    images, questions = mixed_batch
    batch_inputs = extractor.prepare(images, questions)
    batched = extractor.run(batch_inputs)
    singles = [extractor.prepare([im], [q]) for im, q in zip(images, questions, strict=True)]
    return loaded, extractor, batch_inputs, batched, singles


def reference_positions(input_ids: torch.Tensor, attention_mask: torch.Tensor, image_token: int):
    """Plain Python over the ids: last image placeholder and last attended token of each row."""
    vision, query = [], []
    for ids, mask in zip(input_ids.tolist(), attention_mask.tolist(), strict=True):
        vision.append(max(i for i, t in enumerate(ids) if t == image_token))
        query.append(max(i for i, m in enumerate(mask) if m == 1))
    return vision, query


def test_batch_really_mixes_image_sizes_and_padding(setup):
    loaded, _extractor, batch_inputs, batched, _ = setup
    if "aspect_ratio_mask" in batch_inputs:  # Mllama: one image token, but 1 and 2 real tiles
        assert len(set(batch_inputs["aspect_ratio_mask"].sum(dim=(1, 2)).tolist())) > 1
    elif loaded.model_type in FIXED_IMAGE_SIZE:
        assert len(set(batched.n_image_tokens.tolist())) == 1
    else:
        assert len(set(batched.n_image_tokens.tolist())) > 1
    assert len(set(batched.seq_len.tolist())) > 1
    assert batch_inputs["attention_mask"][:, 0].min() == 0, "expected left padding in the batch"


def test_positions_match_input_ids(setup):
    _loaded, extractor, _batch_inputs, batched, singles = setup
    for i, single in enumerate(singles):
        vision, query = reference_positions(
            single["input_ids"], single["attention_mask"], extractor.image_token_id
        )
        assert batched.vision_token_pos[i] == vision[0]
        assert batched.query_token_pos[i] == query[0] == single["input_ids"].shape[1] - 1
        assert batched.seq_len[i] == single["input_ids"].shape[1]
        assert batched.n_image_tokens[i] == int((single["input_ids"] == extractor.image_token_id).sum())
        assert single["input_ids"][0, vision[0] + 1] != extractor.image_token_id  # really the last one


@torch.inference_mode()
def test_vt_qt_equal_plain_forward_hidden_states(setup):
    """Block k <-> hidden_states[k + 1]; the last block is stored before the final norm, so the final
    norm applied to it must give hidden_states[-1]."""
    loaded, _extractor, _, batched, singles = setup
    model = loaded.model
    final_norm = resolve(model, loaded.adapter.final_norm)
    n_blocks = loaded.n_blocks
    for i, single in enumerate(singles):
        hidden = model(**single, output_hidden_states=True).hidden_states
        assert len(hidden) == n_blocks + 1
        positions = {"vision_token": batched.vision_token_pos[i], "query_token": batched.query_token_pos[i]}
        for name, pos in positions.items():
            stored = torch.from_numpy(getattr(batched, name)[i])  # [n_layers, H]
            for j, k in enumerate(LAYERS):
                expected = hidden[k + 1][0, pos]
                if k == n_blocks - 1:
                    assert not torch.allclose(stored[j], expected, atol=TOL), "last block must be pre-norm"
                    torch.testing.assert_close(final_norm(stored[j]), expected, atol=TOL, rtol=0)
                else:
                    torch.testing.assert_close(stored[j], expected, atol=TOL, rtol=0)


def test_batched_equals_one_by_one(setup):
    _, extractor, _, batched, singles = setup
    for i, single in enumerate(singles):
        alone = extractor.run(single)
        for name in ("vision_only", "vision_token", "query_token", "first_token_logprobs"):
            np.testing.assert_allclose(getattr(batched, name)[i], getattr(alone, name)[0], atol=TOL, rtol=0)
        for name in ("vision_token_pos", "query_token_pos", "seq_len", "n_image_tokens"):
            assert getattr(batched, name)[i] == getattr(alone, name)[0]
        assert batched.answers[i] == alone.answers[0]


def qwen_vision_reference(model, single) -> torch.Tensor:
    """Mean of the tower's per-patch output before the merger."""
    patches = model.model.visual(single["pixel_values"], grid_thw=single["image_grid_thw"]).last_hidden_state
    assert patches.shape[0] == int(single["image_grid_thw"].prod())  # pre-merger: one row per patch
    return patches.mean(dim=0)


def mllama_vision_reference(model, single) -> torch.Tensor:
    """Mean over the patches (CLS left out) of the real tiles only, sliced by count."""
    out = model.model.vision_model(
        pixel_values=single["pixel_values"],
        aspect_ratio_ids=single["aspect_ratio_ids"],
        aspect_ratio_mask=single["aspect_ratio_mask"],
    ).last_hidden_state  # [1, 1, max_tiles, 1 + patches, D]
    n_real = int(single["aspect_ratio_mask"][0, 0].sum())
    return out[0, 0, :n_real, 1:].reshape(-1, out.shape[-1]).mean(dim=0)


def phi4mm_vision_reference(model, single) -> torch.Tensor:
    """SigLIP hidden state at feature_layer, mean over real patches of the global crop and real sub-crops."""
    encoder = model.model.embed_tokens_extend.image_embed.img_processor
    n_crops = 1 + int((single["image_sizes"][0] // 448).prod())
    pixels = single["image_pixel_values"][0, :n_crops]
    mask = single["image_attention_mask"][0, :n_crops].bool()
    hidden = encoder(pixels, patch_attention_mask=mask, output_hidden_states=True).hidden_states
    return hidden[model.config.vision_config.feature_layer][mask.flatten(1)].mean(dim=0)


def llava_next_vision_reference(model, single) -> torch.Tensor:
    """CLIP's second-to-last layer over the real tiles, CLS dropped: the base tile's patches and the grid
    tiles' patches minus the rows (or columns) that only pad the image to the grid's aspect ratio, sliced
    here by hand; their count plus one newline per row must be the prompt's image-token count."""
    from transformers.models.llava_next.modeling_llava_next import get_anyres_image_grid_shape

    config, (height, width) = model.config, single["image_sizes"][0].tolist()
    tile, patch = config.vision_config.image_size, config.vision_config.patch_size
    rows, cols = get_anyres_image_grid_shape((height, width), config.image_grid_pinpoints, tile)
    side = tile // patch
    pixels = single["pixel_values"][0, : 1 + rows * cols]
    hidden = model.model.vision_tower(pixels, output_hidden_states=True).hidden_states[-2][:, 1:]
    grid = hidden[1:].reshape(rows, cols, side, side, -1).permute(0, 2, 1, 3, 4)
    grid = grid.reshape(rows * side, cols * side, -1)  # patches laid out as the image
    if width / height > grid.shape[1] / grid.shape[0]:  # wider than the grid: rows of padding
        pad = (grid.shape[0] - int(round(height * grid.shape[1] / width, 7))) // 2
        grid = grid[pad : grid.shape[0] - pad]
    else:
        pad = (grid.shape[1] - int(round(width * grid.shape[0] / height, 7))) // 2
        grid = grid[:, pad : grid.shape[1] - pad]
    n_tokens = int((single["input_ids"] == model.config.image_token_id).sum())
    assert side * side + grid.shape[0] * (grid.shape[1] + 1) == n_tokens
    return torch.cat([hidden[0], grid.reshape(-1, grid.shape[-1])]).mean(dim=0)


def gemma3_vision_reference(model, single) -> torch.Tensor:
    """SigLIP's last hidden state (post-LayerNorm), mean over the patches."""
    return model.model.vision_tower(pixel_values=single["pixel_values"]).last_hidden_state[0].mean(dim=0)


def smolvlm_vision_reference(model, single) -> torch.Tensor:
    """SigLIP over the sample's own crops (its image tokens / tokens per crop: the split crops and the
    global image), mean over the patches its pixel_attention_mask marks; in a batch, the padding crops
    of the shorter samples must not count (batched == one by one checks that)."""
    vision, scale = model.config.vision_config, model.config.scale_factor
    side = vision.image_size // vision.patch_size
    n_crops = int((single["input_ids"] == model.config.image_token_id).sum()) // (side * side // scale**2)
    pixels = single["pixel_values"][0, :n_crops]
    mask = single["pixel_attention_mask"][0, :n_crops].bool()
    patches = mask.reshape(n_crops, side, vision.patch_size, side, vision.patch_size).any(dim=(2, 4))
    hidden = model.model.vision_model(pixel_values=pixels, patch_attention_mask=patches).last_hidden_state
    return hidden[patches.flatten(1)].mean(dim=0)


def fast_vlm_vision_reference(model, single) -> torch.Tensor:
    """The FastViT tower's output grid, mean over height and width."""
    return model.model.vision_tower(single["pixel_values"]).last_hidden_state[0].mean(dim=(1, 2))


def molmo2_vision_reference(model, single) -> torch.Tensor:
    """What the adapter itself receives in a plain forward (its concatenated ViT layers), mean over the
    patches its pooling indices read."""
    seen = {}

    def keep(module, args, kwargs):
        seen["features"], seen["indices"] = (
            kwargs.get("image_features", args[0]),
            kwargs.get("pooled_patches_idx", args[1] if len(args) > 1 else None),
        )

    handle = model.model.multi_modal_projector.register_forward_pre_hook(keep, with_kwargs=True)
    try:
        model(**single)
    finally:
        handle.remove()
    features = seen["features"].reshape(-1, seen["features"].shape[-1])
    read = seen["indices"][seen["indices"] >= 0].unique()
    return features[read].mean(dim=0)


VISION_REFERENCE = {
    "Qwen2VLForConditionalGeneration": qwen_vision_reference,
    "Qwen2_5_VLForConditionalGeneration": qwen_vision_reference,
    "MllamaForConditionalGeneration": mllama_vision_reference,
    "Phi4MultimodalForCausalLM": phi4mm_vision_reference,
    "LlavaNextForConditionalGeneration": llava_next_vision_reference,
    "Gemma3ForConditionalGeneration": gemma3_vision_reference,
    "SmolVLMForConditionalGeneration": smolvlm_vision_reference,
    "FastVlmForConditionalGeneration": fast_vlm_vision_reference,
    "Molmo2ForConditionalGeneration": molmo2_vision_reference,
}


@torch.inference_mode()
def test_vision_only_equals_a_separate_encoder_pass_per_sample(setup):
    loaded, _, _, batched, singles = setup
    reference = VISION_REFERENCE[type(loaded.model).__name__]
    for i, single in enumerate(singles):
        expected = reference(loaded.model, single).numpy()
        np.testing.assert_allclose(batched.vision_only[i], expected, atol=TOL, rtol=0)


@torch.inference_mode()
def test_answer_equals_plain_greedy_generate(setup):
    loaded, _, _, batched, singles = setup
    for i, single in enumerate(singles):
        out = loaded.model.generate(**single, max_new_tokens=MAX_NEW, do_sample=False)
        plain = loaded.processor.decode(out[0, single["input_ids"].shape[1] :], skip_special_tokens=True)
        assert batched.answers[i] == plain


@torch.inference_mode()
def test_first_token_logprobs_match_plain_forward(setup):
    """Read from the prefill's logits (no step's full logits are kept): the top-k of a plain forward."""
    loaded, _, _, batched, singles = setup
    for i, single in enumerate(singles):
        logits = loaded.model(**single).logits[0, -1]
        top = torch.log_softmax(logits, dim=-1).topk(5)
        np.testing.assert_allclose(batched.first_token_logprobs[i], top.values.numpy(), atol=TOL, rtol=0)
        np.testing.assert_array_equal(batched.first_token_ids[i], top.indices.numpy())


def test_hooks_are_removed_after_a_run_even_on_error(setup):
    loaded, extractor, batch_inputs, _, _ = setup
    model = loaded.model
    modules = [
        *loaded.adapter.blocks(model),
        loaded.adapter.vision_module(model),
        model.get_output_embeddings(),
    ]

    def hook_count() -> int:  # transformers keeps hooks of its own on some modules: count ours by difference
        return sum(len(m._forward_hooks) for m in modules)

    before = hook_count()
    extractor.run(batch_inputs)
    assert hook_count() == before
    with pytest.raises(ValueError):
        extractor.run(batch_inputs, not_a_generate_argument=True)  # generate refuses it, hooks in place
    assert hook_count() == before


@torch.inference_mode()
def test_device_map_loading_extracts_the_same(mixed_batch, setup):
    """Loading through accelerate's device_map path extracts the same (one CPU here: no real split)."""
    from halp.config import ModelSettings
    from halp.models.loading import load_model

    loaded, _, _, batched, _ = setup
    dispatched = load_model(ModelSettings(model=loaded.model.name_or_path, device_map="auto"))
    images, questions = mixed_batch
    extractor = Extractor(dispatched, LAYERS, max_new_tokens=MAX_NEW, top_k=5)
    again = extractor.run(extractor.prepare(images, questions))
    for name in ("vision_only", "vision_token", "query_token"):
        np.testing.assert_allclose(getattr(again, name), getattr(batched, name), atol=TOL, rtol=0)
    assert again.answers == batched.answers


def test_a_top_k_beyond_the_vocabulary_is_refused_before_any_sample(load_tiny):
    loaded = load_tiny("qwen2_vl")
    vocabulary = loaded.model.get_output_embeddings().weight.shape[0]
    assert Extractor(loaded, LAYERS, max_new_tokens=1, top_k=vocabulary).top_k == vocabulary
    with pytest.raises(
        ConfigError, match=rf"extract.top_k {vocabulary + 1} exceeds the vocabulary .*at most"
    ):
        Extractor(loaded, LAYERS, max_new_tokens=1, top_k=vocabulary + 1)
