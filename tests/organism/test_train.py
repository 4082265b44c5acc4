"""The demo VLM's training: rows as the model's own chat template, scenes apart from evaluation,
deterministic weights that load and extract like any checkpoint."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from halp.config import ModelSettings, OrganismSettings
from halp.data import demo
from halp.extract.engine import Extractor
from halp.models.loading import load_model
from halp.models.synthetic.qwen_vl import build_qwen
from halp.organism.train import CURRICULUM, TRAINING_STREAM, TrainingSet, train_demo

ALL_KINDS = {kind for phase in CURRICULUM for kind in phase}


@pytest.fixture(scope="module")
def training():
    _, processor = build_qwen("qwen2_vl", "demo")
    return processor, TrainingSet(processor, OrganismSettings(n_images=6))


def test_a_row_is_the_chat_template_of_the_conversation(training):
    processor, data = training
    for image in range(6):
        order = np.random.default_rng(image).permutation(len(data.turns[image]))
        ids, labels = data.row(image, ALL_KINDS, np.random.default_rng(image))
        decode = processor.tokenizer.decode
        messages = []
        for n, j in enumerate(order):
            turn = data.turns[image][j]
            content = [{"type": "text", "text": decode(turn.question)}]
            messages.append({"role": "user", "content": ([{"type": "image"}] if n == 0 else []) + content})
            answer = decode(turn.answer[:-1])
            messages.append({"role": "assistant", "content": [{"type": "text", "text": answer}]})
        text = processor.apply_chat_template(messages)
        n_pads = int(data.grids[image].prod()) // 4
        expected = processor.tokenizer(text.replace("<|image_pad|>", "<|image_pad|>" * n_pads))["input_ids"]
        assert ids == expected
        trained = [t for t, label in zip(ids, labels, strict=True) if label != -100]
        assert trained == [t for j in order for t in data.turns[image][j].answer]


def test_the_curriculum_opens_colour_then_shape_then_everything(training):
    _, data = training
    settings = OrganismSettings()
    first, second = settings.curriculum
    assert data.open_kinds(0, settings) == {"colour"}
    assert data.open_kinds(first, settings) == {"colour", "shape"}
    assert data.open_kinds(second, settings) == ALL_KINDS
    processor, _ = training
    ids, labels = data.row(0, {"colour"}, np.random.default_rng(0))
    answers = processor.tokenizer.decode([t for t, label in zip(ids, labels, strict=True) if label != -100])
    assert set(answers.replace("<|im_end|>", " ").split()) <= set(demo.COLOURS)


def test_training_scenes_are_drawn_apart_from_the_evaluation_set():
    train, evaluate = random.Random(f"{TRAINING_STREAM}/0"), random.Random(0)
    size = demo.CANVAS_SIZES[0]
    training = [demo.scene(train, size, demo.TRAINING) for _ in range(2000)]
    evaluation = [demo.scene(evaluate, size) for _ in range(2000)]
    assert not {tuple(s) for s in training} & {tuple(s) for s in evaluation}

    def rare_share(scenes):
        shapes = [s for scene in scenes for s in scene]
        return np.mean([(s.colour, s.kind) in demo.RARE for s in shapes])

    assert rare_share(evaluation) > 0.08 and rare_share(training) < 0.01  # seen rarely, not never
    assert rare_share(training) > 0


def test_same_seed_same_weights_loaded_like_any_checkpoint(tmp_path, mixed_batch):
    settings = dict(n_images=8, steps=3, batch_size=4, curriculum=[1, 2])
    folders = []
    for name in ("a", "b"):
        out = tmp_path / name
        train_demo(OrganismSettings(out_dir=out, metrics=tmp_path / f"{name}.json", **settings))
        folders.append(out)
    assert (folders[0] / "model.safetensors").read_bytes() == (folders[1] / "model.safetensors").read_bytes()
    loaded = load_model(ModelSettings(model=str(folders[0])))
    assert type(loaded.model).__name__ == "Qwen2VLForConditionalGeneration"
    extractor = Extractor(loaded, [0, 3], max_new_tokens=4, top_k=5)
    out = extractor.run(extractor.prepare(*mixed_batch))
    assert out.query_token.shape == (3, 2, 128) and torch.isfinite(torch.from_numpy(out.query_token)).all()
