"""The organisms' training: one loop for every architecture, rows as each model's own chat template, labels
on the answers only, scenes apart from evaluation, deterministic weights that load and extract like any
checkpoint, and curves where DVC looks."""

from __future__ import annotations

import copy
import csv
import json
import random

import numpy as np
import pytest
import torch

from halp.config import ORGANISM_ARCHS, ConfigError, ModelSettings, OrganismSettings, TrainingRecipe
from halp.data import demo
from halp.extract.engine import Extractor
from halp.models.loading import load_model
from halp.models.registry import adapter_for
from halp.models.synthetic import instantiate
from halp.organism.train import (
    KINDS,
    TRAINING_STREAM,
    Collator,
    TrainingSet,
    conversation,
    stop_ids,
    train_organism,
)


@pytest.fixture(scope="module", params=ORGANISM_ARCHS)
def organism(request):
    torch.manual_seed(0)
    model, processor = instantiate(request.param, "demo")
    collate = Collator(processor, adapter_for(model.config.model_type, request.param), stop_ids(model))
    return model, processor, TrainingSet(collate, TrainingRecipe(n_images=6))


def test_a_row_is_the_processors_own_chat_with_labels_on_each_answer_and_its_stop(organism):
    """The reference tokenises with `apply_chat_template(tokenize=True)`, the image in the message, and
    finds each answer as what a conversation closed after it adds to its prompt."""
    model, processor, data = organism
    batch = data.batch(np.arange(6), set(KINDS), np.random.default_rng(0))
    orders = np.random.default_rng(0)  # the batch's own draws, in the same sequence
    stops = set(stop_ids(model))

    for row in range(6):
        turns = [data.turns[row][j] for j in orders.permutation(len(data.turns[row]))]
        messages = conversation(turns)
        with_image = copy.deepcopy(messages)
        with_image[0]["content"][0]["image"] = data.images[row]

        def tokens(upto: int, prompt: bool = False, chat=with_image) -> list[int]:
            encoded = processor.apply_chat_template(
                chat[:upto], tokenize=True, return_dict=True, add_generation_prompt=prompt
            )
            return list(encoded["input_ids"][0])

        length = int(batch["attention_mask"][row].sum())
        assert batch["attention_mask"][row, :length].all(), "right padding: positions start at 0"
        assert batch["input_ids"][row, :length].tolist() == tokens(len(messages))
        answers = []
        for k in range(1, len(messages), 2):
            prompt, closed = tokens(k, prompt=True), tokens(k + 1)
            assert closed[: len(prompt)] == prompt
            added = closed[len(prompt) :]
            answers += added[: next(i for i, t in enumerate(added) if t in stops) + 1]
        labels = batch["labels"][row]
        assert labels[labels != -100].tolist() == answers
        assert len(answers) > len(turns), "every answer and its stop token"


def test_the_curriculum_opens_colour_then_shape_then_everything(organism):
    model, processor, data = organism
    recipe = TrainingRecipe()
    first, second = recipe.curriculum
    assert data.open_kinds(0, recipe) == {"colour"}
    assert data.open_kinds(first, recipe) == {"colour", "shape"}
    assert data.open_kinds(second, recipe) == set(KINDS)
    rng = np.random.default_rng(0)
    batch = data.batch(data.draw_images({"colour"}, 4, rng), {"colour"}, rng)
    answers = processor.tokenizer.decode(batch["labels"][batch["labels"] != -100])
    for stop in processor.tokenizer.convert_ids_to_tokens(stop_ids(model)):
        answers = answers.replace(stop, " ")
    assert answers.split() and set(answers.split()) <= set(demo.COLOURS)


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


@pytest.mark.parametrize("arch", ORGANISM_ARCHS)
def test_same_seed_same_weights_loaded_like_any_checkpoint_with_curves(arch, tmp_path, mixed_batch):
    recipe = dict(n_images=8, steps=3, batch_size=4, curriculum=[1, 2], heldout_images=2, eval_every=2)
    for run in ("a", "b"):
        settings = OrganismSettings(
            models_dir=tmp_path / run,
            metrics_dir=tmp_path / run,
            live_dir=tmp_path / run / "live",
            recipe=recipe,
            subjects={"it": {"arch": arch}},
        )
        train_organism("it", settings)
    weights = [(tmp_path / run / "it" / "model.safetensors").read_bytes() for run in ("a", "b")]
    assert weights[0] == weights[1]

    loaded = load_model(ModelSettings(model=str(tmp_path / "a" / "it")))
    assert loaded.model_type == arch and loaded.n_blocks >= 4
    extractor = Extractor(loaded, [0, loaded.n_blocks - 1], max_new_tokens=4, top_k=5)
    out = extractor.run(extractor.prepare(*mixed_batch))
    assert out.query_token.shape == (3, 2, 128) and np.isfinite(out.query_token).all()

    summary = json.loads((tmp_path / "a" / "it.json").read_text())
    assert (
        summary["arch"] == arch and summary["steps"] == 3 and set(summary["heldout_accuracy"]) <= set(KINDS)
    )
    curves = tmp_path / "a" / "live" / "it" / "plots" / "metrics"
    with (curves / "train" / "loss.tsv").open() as f:
        assert [int(r["step"]) for r in csv.DictReader(f, delimiter="\t")] == [0, 1, 2]
    with (curves / "heldout" / "colour.tsv").open() as f:  # after step 2 and after the last
        assert [int(r["step"]) for r in csv.DictReader(f, delimiter="\t")] == [1, 2]


def test_a_subject_sets_only_training_settings_and_names_the_bad_one():
    settings = OrganismSettings(subjects={"slow": {"arch": "mllama", "steps": 9}})
    assert settings.recipe_for("slow").steps == 9 and settings.recipe_for("slow").seed == 0
    with pytest.raises(ValueError, match="stepz is not a training setting"):
        OrganismSettings(subjects={"slow": {"arch": "mllama", "stepz": 9}})
    with pytest.raises(ValueError, match=r"subjects\.slow: steps: Input should be greater"):
        OrganismSettings(subjects={"slow": {"arch": "mllama", "steps": 0}})
    with pytest.raises(ValueError, match="arch"):
        OrganismSettings(subjects={"slow": {"arch": "phi4mm"}})
    with pytest.raises(ConfigError, match="unknown organism 'fast'"):
        settings.recipe_for("fast")
