"""The demo organisms: small VLMs of several real architectures (the library's classes, processors and chat
templates) trained here from scratch on scenes of the demo world, so the default pipeline has models whose
hallucinations are planted and understood (`halp.data.demo` says which).

One loop trains every architecture. What differs is data: the builder gives the model and its processor,
the adapter puts images and chat texts through that processor exactly as extraction does, and the labels
are found from the processor's own character offsets, so no architecture's token layout is written here.

Training scenes come from `demo.TRAINING` under their own seed, never from the evaluation set: rare
colour-shape pairs are almost absent, small and faint shapes are drawn as in evaluation. A curriculum is
needed (colour questions first, then shape, then all; without it the model settles on one answer per
question type), and the budget is counted in steps, not seconds, so the same seed gives the same
weights run after run (tested here; another CPU may round floats differently).
"""

from __future__ import annotations

import bisect
import json
import logging
import math
import random
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
from dvclive import Live
from PIL.Image import Image
from transformers import BatchFeature, PreTrainedModel

from halp.config import OrganismSettings, TrainingRecipe
from halp.data import demo
from halp.models.adapter import Adapter
from halp.models.registry import adapter_for
from halp.models.synthetic import instantiate

log = logging.getLogger(__name__)
TRAINING_STREAM = "demo-vlm-training"  # string seeds are hashed (sha512): apart from demo.seed's integers
HELDOUT_STREAM = "demo-vlm-heldout"  # the training world again, scenes never trained on
# Question kinds in curriculum order; each phase adds the next kind(s) to the pool.
CURRICULUM = (("colour",), ("shape",), ("existence", "false_premise"))
KINDS = tuple(kind for phase in CURRICULUM for kind in phase)


@dataclass(frozen=True)
class Turn:
    kind: str
    question: str
    answer: str


def _answer_text(q: demo.Question) -> str:
    if q.category == "false_premise":  # "No; there is no purple triangle in the image"
        return "There is no " + q.gt_answer.split("there is no ", 1)[1].removesuffix(" in the image") + "."
    return q.gt_answer


def _kind(q: demo.Question) -> str:
    return "colour" if q.category == "attribute" else q.category


def training_questions(rng: random.Random, shapes: list[demo.Shape], false_premise_keep: float) -> list[Turn]:
    """The evaluation kinds (false premises thinned out) plus a training-only shape question."""
    kept = [
        Turn(_kind(q), q.question, _answer_text(q))
        for q in demo.questions(rng, shapes)
        if q.category != "false_premise" or rng.random() < false_premise_keep
    ]
    by_colour = {s.colour: [t for t in shapes if t.colour == s.colour] for s in shapes}
    unique = [s for s in shapes if len(by_colour[s.colour]) == 1]
    if unique:
        s = rng.choice(unique)
        kept.append(Turn("shape", f"What shape is the {s.colour} object?", s.kind))
    return kept


def draw_scenes(
    stream: str, n_images: int, false_premise_keep: float
) -> tuple[list[Image], list[list[Turn]]]:
    """Images of the training world and each one's questions, from one seeded stream."""
    rng = random.Random(stream)
    images, turns = [], []
    for _ in range(n_images):
        size = demo.CANVAS_SIZES[rng.randrange(len(demo.CANVAS_SIZES))]
        shapes = demo.scene(rng, size, demo.TRAINING)
        images.append(demo.draw(size, shapes))
        turns.append(training_questions(rng, shapes, false_premise_keep))
    return images, turns


def conversation(turns: Sequence[Turn]) -> list[dict]:
    """One image's questions as a chat, each answered: the image opens the first user turn, so the first
    turn is exactly what evaluation asks."""
    messages = []
    for n, turn in enumerate(turns):
        text = [{"type": "text", "text": turn.question}]
        messages.append({"role": "user", "content": ([{"type": "image"}] if n == 0 else []) + text})
        messages.append({"role": "assistant", "content": [{"type": "text", "text": turn.answer}]})
    return messages


class Collator:
    """Conversations -> a training batch: the processor's own tensors, right-padded, with labels on each
    answer and the end-of-turn token that stops generation after it (-100 everywhere else)."""

    def __init__(self, processor: Any, adapter: Adapter, stop_ids: Sequence[int]):
        self.processor, self.adapter = processor, adapter
        self.stop_ids = set(stop_ids)
        self.stops = processor.tokenizer.convert_ids_to_tokens(sorted(self.stop_ids))

    def _render(self, messages: list[dict], prompt: bool = False) -> str:
        return self.processor.apply_chat_template(messages, add_generation_prompt=prompt)

    def answer_spans(self, messages: list[dict]) -> tuple[str, list[tuple[int, int]]]:
        """The rendered chat and, per answer, its characters through the end-of-turn token. Each answer starts
        where the template's generation prompt after the question ends (so a leading space the template
        puts before it is the model's to say, as at generation)."""
        text = self._render(messages)
        spans = []
        for k in range(1, len(messages), 2):
            start = len(self._render(messages[:k], prompt=True))
            closed = self._render(messages[: k + 1])
            if not text.startswith(closed) or not closed.startswith(text[:start]):
                raise ValueError("this chat template does not render a conversation turn by turn")
            ends = [closed.find(stop, start) for stop in self.stops]
            found = [(at, stop) for at, stop in zip(ends, self.stops, strict=True) if at >= 0]
            if not found:
                raise ValueError(f"the template closes an answer with none of the stop tokens {self.stops}")
            at, stop = min(found)
            spans.append((start, at + len(stop)))
        return text, spans

    def __call__(self, images: Sequence[Image], conversations: Sequence[list[dict]]) -> BatchFeature:
        rendered = [self.answer_spans(messages) for messages in conversations]
        batch = self.adapter.encode(
            self.processor,
            [text for text, _ in rendered],
            images,
            padding_side="right",  # every row's positions start at 0, as one prompt's do at evaluation
            return_offsets_mapping=True,
            return_text_replacement_offsets=True,
        )
        offsets = batch.pop("offset_mapping")  # [B, S, 2]: characters of each token, (0, 0) for padding
        replaced = batch.pop("text_replacement_offsets", None) or [[] for _ in rendered]
        ids = batch["input_ids"]
        labels = torch.full_like(ids, -100)
        for row, ((_, spans), expansions) in enumerate(zip(rendered, replaced, strict=True)):
            first, last = offsets[row, :, 0], offsets[row, :, 1]
            for start, end in _expanded(spans, expansions):
                inside = torch.nonzero((first < end) & (last > start)).flatten()
                labels[row, inside] = ids[row, inside]
                if int(ids[row, inside[-1]]) not in self.stop_ids:
                    raise ValueError("an answer's labelled tokens do not end on a stop token")
        batch["labels"] = labels
        return batch


def _expanded(spans: list[tuple[int, int]], expansions: list[dict]) -> list[tuple[int, int]]:
    """Character spans of the rendered text moved to the text the processor tokenised, in which each image
    placeholder was replaced by its image tokens."""
    ends = [r["span"][1] for r in expansions]
    gained = np.cumsum([0] + [r["new_span"][1] - r["span"][1] for r in expansions])
    return [tuple(int(c + gained[bisect.bisect_right(ends, c)]) for c in span) for span in spans]


class TrainingSet:
    """Training scenes drawn once; a batch row is one image and all its questions open at that step, in a
    random order, as one conversation (the image passes the encoder once for all of them: about half the
    cost per question of one row per question, measured)."""

    def __init__(self, collate: Collator, recipe: TrainingRecipe):
        stream = f"{TRAINING_STREAM}/{recipe.seed}"  # never the evaluation set's stream
        self.images, self.turns = draw_scenes(stream, recipe.n_images, recipe.false_premise_keep)
        self.collate = collate
        self.n_questions = sum(map(len, self.turns))

    def batch(self, images: np.ndarray, kinds: set[str], rng: np.random.Generator) -> BatchFeature:
        conversations = []
        for i in images:
            open_turns = [t for t in self.turns[i] if t.kind in kinds]
            conversations.append(conversation([open_turns[j] for j in rng.permutation(len(open_turns))]))
        return self.collate([self.images[i] for i in images], conversations)

    @staticmethod
    def open_kinds(step: int, recipe: TrainingRecipe) -> set[str]:
        """The question kinds open at this step of the curriculum."""
        phases = sum(step >= start for start in recipe.curriculum)
        return {k for phase in CURRICULUM[: phases + 1] for k in phase}

    def draw_images(self, kinds: set[str], questions: int, rng: np.random.Generator) -> np.ndarray:
        """Random images until they hold `questions` open questions: a step trains on about as many
        questions early in the curriculum (one per image) as late (several per image)."""
        counts = np.array([sum(t.kind in kinds for t in turns) for turns in self.turns])
        order = rng.permutation(np.flatnonzero(counts))
        return order[: int(np.searchsorted(np.cumsum(counts[order]), questions)) + 1]


def _normalised(answer: str) -> str:
    return re.sub(r"[^a-z ]", "", answer.lower()).strip()


@torch.no_grad()
def heldout_accuracy(
    model: PreTrainedModel,
    processor: Any,
    adapter: Adapter,
    scenes: tuple[list[Image], list[list[Turn]]],
    batch_size: int = 64,
) -> dict[str, float]:
    """Share of held-out questions per kind answered exactly (greedy, the prompt evaluation uses)."""
    asked = [(image, turn) for image, turns in zip(*scenes, strict=True) for turn in turns]
    right: dict[str, list[bool]] = {kind: [] for kind in KINDS}
    was_training = model.training
    model.eval()
    for at in range(0, len(asked), batch_size):
        chunk = asked[at : at + batch_size]
        inputs = adapter.build_inputs(processor, [i for i, _ in chunk], [t.question for _, t in chunk])
        generated = model.generate(**inputs, max_new_tokens=12, do_sample=False)
        answers = processor.batch_decode(
            generated[:, inputs["input_ids"].shape[1] :], skip_special_tokens=True
        )
        for (_, turn), answer in zip(chunk, answers, strict=True):
            right[turn.kind].append(_normalised(answer) == _normalised(turn.answer))
    model.train(was_training)
    return {kind: round(float(np.mean(hits)), 4) for kind, hits in right.items() if hits}


def learning_rate_factor(step: int, recipe: TrainingRecipe) -> float:
    """Linear warm-up, then a cosine decay to a tenth: a short budget ends on small steps."""
    if step < recipe.warmup_steps:
        return (step + 1) / recipe.warmup_steps
    done = (step - recipe.warmup_steps) / max(1, recipe.steps - recipe.warmup_steps)
    return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * done))


def stop_ids(model: PreTrainedModel) -> list[int]:
    """The tokens generation stops on: what each answer must end with."""
    eos = model.generation_config.eos_token_id
    return [eos] if isinstance(eos, int) else list(eos)


def train_organism(name: str, settings: OrganismSettings) -> Path:
    """Build, train and save one organism with `save_pretrained`; its curves go to DVCLive and a small
    summary to metrics_dir/NAME.json."""
    recipe, arch = settings.recipe_for(name), settings.subjects[name].arch
    torch.manual_seed(recipe.seed)
    model, processor = instantiate(arch, "demo")
    adapter = adapter_for(model.config.model_type, name)
    started = time.perf_counter()
    data = TrainingSet(Collator(processor, adapter, stop_ids(model)), recipe)
    heldout = draw_scenes(f"{HELDOUT_STREAM}/{recipe.seed}", recipe.heldout_images, 1.0)
    log.info("%s (%s): %d training questions on %d images", name, arch, data.n_questions, recipe.n_images)
    optimiser = torch.optim.AdamW(
        model.parameters(), lr=recipe.learning_rate, betas=(0.9, 0.98), weight_decay=0.01
    )
    schedule = torch.optim.lr_scheduler.LambdaLR(optimiser, partial(learning_rate_factor, recipe=recipe))
    order = np.random.default_rng(recipe.seed)
    losses, accuracy = [], {}
    model.train()
    with Live(dir=str(settings.live_dir / name), dvcyaml=None, save_dvc_exp=False, report=None) as live:
        for step in range(recipe.steps):
            kinds = data.open_kinds(step, recipe)
            loss = model(**data.batch(data.draw_images(kinds, recipe.batch_size, order), kinds, order)).loss
            optimiser.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimiser.step()
            schedule.step()
            losses.append(loss.item())
            live.log_metric("train/loss", losses[-1])
            if (step + 1) % recipe.eval_every == 0 or step == recipe.steps - 1:
                accuracy = heldout_accuracy(model, processor, adapter, heldout)
                for kind, share in accuracy.items():
                    live.log_metric(f"heldout/{kind}", share)
                log.info(
                    "%s step %d/%d: loss %.4f, held out %s",
                    name,
                    step + 1,
                    recipe.steps,
                    np.mean(losses[-100:]),
                    accuracy,
                )
            live.next_step()
    Path(live.metrics_file).unlink()  # its summary is NAME.json's; only curves go where `dvc plots` looks
    model.eval()
    folder = settings.models_dir / name
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    record = {
        "arch": arch,
        "parameters": sum(p.numel() for p in model.parameters()),
        "decoder_blocks": len(adapter.blocks(model)),
        "training_questions": data.n_questions,
        "steps": recipe.steps,
        "final_loss": round(float(np.mean(losses[-100:])), 4),
        "heldout_accuracy": accuracy,
        "seconds": round(time.perf_counter() - started, 1),
    }
    settings.metrics_dir.mkdir(parents=True, exist_ok=True)
    (settings.metrics_dir / f"{name}.json").write_text(json.dumps(record, indent=1) + "\n")
    log.info("%s trained in %.0f s -> %s", name, record["seconds"], folder)
    return folder
