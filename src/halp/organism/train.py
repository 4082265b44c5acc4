"""The demo VLM: a small Qwen2-VL (the library's real classes, processor and chat template) trained here
from scratch on scenes of the demo world, so the default pipeline has a model whose hallucinations are
planted and understood (`halp.data.demo` says which).

Training scenes come from `demo.TRAINING` under their own seed, never from the evaluation set: rare
colour-shape pairs are almost absent, small and faint shapes are drawn as in evaluation. A curriculum is
needed (colour questions first, then shape, then all; without it the model settles on one answer per
question type), and the budget is counted in steps, not seconds, so the same seed gives the same
weights run after run (tested here; another CPU may round floats differently).
"""

from __future__ import annotations

import json
import logging
import math
import random
import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from halp.config import OrganismSettings
from halp.data import demo
from halp.models.synthetic.qwen_vl import build_qwen

log = logging.getLogger(__name__)
TRAINING_STREAM = "demo-vlm-training"  # string seeds are hashed (sha512): apart from demo.seed's integers
# Question kinds in curriculum order; each phase adds the next kind(s) to the pool.
CURRICULUM = (("colour",), ("shape",), ("existence", "false_premise"))


@dataclass(frozen=True)
class Turn:
    kind: str
    question: list[int]
    answer: list[int]  # answer tokens and the end-of-turn token: what the loss is on


def _answer_text(q: demo.Question) -> str:
    if q.category == "false_premise":  # "No; there is no purple triangle in the image"
        return "There is no " + q.gt_answer.split("there is no ", 1)[1].removesuffix(" in the image") + "."
    return q.gt_answer


def _kind(q: demo.Question) -> str:
    return "colour" if q.category == "attribute" else q.category


def training_questions(
    rng: random.Random, shapes: list[demo.Shape], false_premise_keep: float
) -> list[tuple[str, str, str]]:
    """(kind, question, answer) of the evaluation kinds (false premises thinned out) plus a training-only
    shape question."""
    kept = [
        (_kind(q), q.question, _answer_text(q))
        for q in demo.questions(rng, shapes)
        if q.category != "false_premise" or rng.random() < false_premise_keep
    ]
    by_colour = {s.colour: [t for t in shapes if t.colour == s.colour] for s in shapes}
    unique = [s for s in shapes if len(by_colour[s.colour]) == 1]
    if unique:
        s = rng.choice(unique)
        kept.append(("shape", f"What shape is the {s.colour} object?", s.kind))
    return kept


class TrainingSet:
    """Training scenes as tensors once: every image's patches (float16) and its questions' tokens.

    A row of a batch is one image and all its questions open at that step, as a multi-turn chat in the
    model's own template (questions in a random order): the image passes the encoder once for all of
    them (about half the cost per question of one row per question, measured). The first turn is exactly
    what evaluation asks.
    """

    def __init__(self, processor, settings: OrganismSettings):
        rng = random.Random(f"{TRAINING_STREAM}/{settings.seed}")  # never the evaluation set's stream
        tokenizer = processor.tokenizer

        def ids(text: str) -> list[int]:
            return tokenizer(text, add_special_tokens=False)["input_ids"]

        self.pad_id = tokenizer.convert_tokens_to_ids("<|image_pad|>")
        # the template's pieces around each turn (tests check their sum against the template itself)
        self.user, self.image = ids("<|im_start|>user\n"), ids("<|vision_start|><|image_pad|><|vision_end|>")
        self.assistant, self.end = ids("<|im_end|>\n<|im_start|>assistant\n"), ids("<|im_end|>\n")
        patches, grids, self.turns = [], [], []
        for _ in range(settings.n_images):
            size = demo.CANVAS_SIZES[rng.randrange(len(demo.CANVAS_SIZES))]
            shapes = demo.scene(rng, size, demo.TRAINING)
            pixels = processor.image_processor(images=[demo.draw(size, shapes)], return_tensors="pt")
            patches.append(pixels["pixel_values"].half())
            grids.append(pixels["image_grid_thw"][0])
            self.turns.append(
                [
                    Turn(kind, ids(question), ids(answer) + self.end[:1])
                    for kind, question, answer in training_questions(rng, shapes, settings.false_premise_keep)
                ]
            )
        self.grids = torch.stack(grids)  # [n_images, 3]
        self.offsets = np.cumsum([0] + [len(p) for p in patches])
        self.patches = torch.cat(patches)  # [all patches, C * T * P * P]
        self.merge = processor.image_processor.merge_size**2
        self.n_questions = sum(map(len, self.turns))

    def row(self, image: int, kinds: set[str], rng: np.random.Generator) -> tuple[list[int], list[int]]:
        """(ids, labels) of one image's open questions as one conversation; labels -100 but on answers."""
        turns = [t for t in self.turns[image] if t.kind in kinds]
        n_pads = int(self.grids[image].prod() // self.merge)
        at = self.image.index(self.pad_id)
        ids = self.user + self.image[:at] + [self.pad_id] * n_pads + self.image[at + 1 :]
        labels = [-100] * len(ids)
        for n, j in enumerate(rng.permutation(len(turns))):
            prompt = (self.user if n else []) + turns[j].question + self.assistant
            ids += prompt + turns[j].answer + self.end[1:]
            labels += [-100] * len(prompt) + turns[j].answer + [-100] * len(self.end[1:])
        return ids, labels

    def batch(self, images: np.ndarray, kinds: set[str], rng: np.random.Generator) -> dict[str, Tensor]:
        """Right-padded rows, one per image."""
        rows = [self.row(i, kinds, rng) for i in images]
        width = max(len(r) for r, _ in rows)
        ids = torch.zeros(len(rows), width, dtype=torch.long)
        mask = torch.zeros_like(ids)
        target = torch.full_like(ids, -100)
        for r, (row, label) in enumerate(rows):
            ids[r, : len(row)] = torch.tensor(row)
            mask[r, : len(row)] = 1
            target[r, : len(row)] = torch.tensor(label)
        return dict(
            input_ids=ids,
            attention_mask=mask,
            mm_token_type_ids=(ids == self.pad_id).long(),  # what the processor returns: 1 at image tokens
            labels=target,
            pixel_values=torch.cat(
                [self.patches[self.offsets[i] : self.offsets[i + 1]] for i in images]
            ).float(),
            image_grid_thw=self.grids[images],
        )

    def open_kinds(self, step: int, settings: OrganismSettings) -> set[str]:
        """The question kinds open at this step of the curriculum."""
        phases = sum(step >= start for start in settings.curriculum)
        return {k for phase in CURRICULUM[: phases + 1] for k in phase}

    def draw_images(self, kinds: set[str], questions: int, rng: np.random.Generator) -> np.ndarray:
        """Random images until they hold `questions` open questions: a step trains on about as many
        questions early in the curriculum (one per image) as late (several per image)."""
        counts = np.array([sum(t.kind in kinds for t in turns) for turns in self.turns])
        order = rng.permutation(np.flatnonzero(counts))
        return order[: int(np.searchsorted(np.cumsum(counts[order]), questions)) + 1]


def learning_rate_factor(step: int, settings: OrganismSettings) -> float:
    """Linear warm-up, then a cosine decay to a tenth: a short budget ends on small steps."""
    if step < settings.warmup_steps:
        return (step + 1) / settings.warmup_steps
    done = (step - settings.warmup_steps) / max(1, settings.steps - settings.warmup_steps)
    return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * done))


def train_demo(settings: OrganismSettings) -> Path:
    """Build, train and save the demo VLM with `save_pretrained`; writes a training log as metrics."""
    torch.manual_seed(settings.seed)
    model, processor = build_qwen("qwen2_vl", "demo")
    started = time.perf_counter()
    data = TrainingSet(processor, settings)
    prepared = time.perf_counter() - started
    log.info("demo VLM: %d training questions on %d images", data.n_questions, settings.n_images)
    optimiser = torch.optim.AdamW(
        model.parameters(), lr=settings.learning_rate, betas=(0.9, 0.98), weight_decay=0.01
    )
    schedule = torch.optim.lr_scheduler.LambdaLR(optimiser, partial(learning_rate_factor, settings=settings))
    order = np.random.default_rng(settings.seed)
    losses = []
    model.train()
    for step in range(settings.steps):
        kinds = data.open_kinds(step, settings)
        batch = data.batch(data.draw_images(kinds, settings.batch_size, order), kinds, order)
        loss = model(**batch).loss
        optimiser.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimiser.step()
        schedule.step()
        losses.append(loss.item())
        if step % 100 == 0 or step == settings.steps - 1:
            log.info("step %d/%d: loss %.4f", step, settings.steps, np.mean(losses[-100:]))
    model.eval()
    settings.out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(settings.out_dir)
    processor.save_pretrained(settings.out_dir)
    record = {
        "parameters": sum(p.numel() for p in model.parameters()),
        "training_questions": data.n_questions,
        "steps": settings.steps,
        "final_loss": float(np.mean(losses[-100:])),
        "loss_by_100_steps": [
            round(float(np.mean(losses[i : i + 100])), 4) for i in range(0, len(losses), 100)
        ],
        "seconds_preparing": round(prepared, 1),
        "seconds_total": round(time.perf_counter() - started, 1),
    }
    settings.metrics.parent.mkdir(parents=True, exist_ok=True)
    settings.metrics.write_text(json.dumps(record, indent=1) + "\n")
    log.info("demo VLM trained in %.0f s -> %s", record["seconds_total"], settings.out_dir)
    return settings.out_dir
