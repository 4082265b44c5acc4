"""A saved probe used before the answer: each question's calibrated risk of a hallucinated answer, from the
same prefill hooks the extraction uses (no second pass), and, if asked, abstention at the prefill."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from PIL.Image import Image
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from safetensors.torch import load, save
from transformers import BatchFeature

from halp.config import ConfigError, ModelSettings, Representation
from halp.extract.engine import Extractor
from halp.jsonfile import json_text
from halp.models.fingerprint import model_fingerprint
from halp.models.loading import LoadedModel, load_model
from halp.probe.classifiers import build_probe
from halp.probe.features import ATTENTION_CELLS, attention_cell, stacked
from halp.store.parts import write_atomically

CARD = "guard.json"
WEIGHTS = "probe.safetensors"
SEAL = "seal"  # the card's key for the digest of the weights and the rest of the card


class Calibration(BaseModel):
    model_config = ConfigDict(extra="allow")
    slope: float
    intercept: float


class ProbeSettings(BaseModel):
    model_config = ConfigDict(extra="allow")
    mlp_rank: int | None = Field(ge=1)


class CardFields(BaseModel):
    """What `Guard.load` reads from a card; anything else in it is information for people."""

    model_config = ConfigDict(extra="allow")
    source: str
    revision: str | None
    fingerprint: str
    dtype: str
    max_new_tokens: int = Field(ge=1)
    n_blocks: int = Field(ge=1)
    hidden_size: int = Field(ge=1)
    representation: Representation
    layer: int | None = Field(ge=-1)
    attention_layers: list[int] | None = None  # the blocks an image-attention cell reads
    width: int = Field(ge=1)
    probe: Literal["mlp", "logistic"]
    probe_settings: ProbeSettings
    calibration: Calibration
    thresholds: dict[str, float]


def seal(card: dict, weights: bytes) -> str:
    """sha256 of the weights and every other field of the card: an edit of either, or weights from another
    fit, no longer matches, so a guard never reads one probe's weights through another's card."""
    fields = json.dumps({k: v for k, v in card.items() if k != SEAL}, sort_keys=True).encode()
    return "sha256:" + hashlib.sha256(weights + fields).hexdigest()


def write_guard(folder: Path, card: dict, state: dict[str, torch.Tensor]) -> None:
    """The weights and the sealed card, each written whole (a temporary file renamed), weights first: a
    kill between the two leaves a card whose seal does not match, refused on load, never a mixed guard."""
    folder.mkdir(parents=True, exist_ok=True)
    weights = save(state)
    card = card | {SEAL: seal(card, weights)}
    write_atomically(folder / WEIGHTS, weights)
    write_atomically(folder / CARD, json_text(card).encode())


def read_card(folder: Path) -> tuple[dict, bytes]:
    """The card, checked against its schema and sealed to these weights, and the weights' bytes."""
    card_path, weights_path = folder / CARD, folder / WEIGHTS
    if not card_path.is_file():
        raise FileNotFoundError(f"{card_path} not found: run `halp guard-fit --model NAME` first")
    refit = "run `halp guard-fit --model NAME` to fit it again (a guard is fitted, not edited)"
    try:
        card = json.loads(card_path.read_text())
        CardFields.model_validate(card)
    except json.JSONDecodeError as err:
        raise ConfigError(f"{card_path} is not valid JSON ({err}): {refit}") from None
    except ValidationError as err:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in err.errors())
        raise ConfigError(f"{card_path} is not a guard card ({problems}): {refit}") from None
    if not weights_path.is_file():
        raise FileNotFoundError(f"{weights_path} not found: {refit}")
    weights = weights_path.read_bytes()
    if SEAL not in card:
        raise ConfigError(f"{card_path} has no seal (it predates sealed guards): {refit}")
    if card[SEAL] != seal(card, weights):
        raise ConfigError(
            f"{card_path} and {weights_path.name} do not belong together: one was edited, cut short or "
            f"replaced since `halp guard-fit` wrote them. Restore both (`dvc checkout`) or {refit}"
        )
    return card, weights


class GuardMismatch(ConfigError):
    """A guard applied to a model other than the one it was fitted on."""


def calibrated(scores: np.ndarray, calibration: dict) -> np.ndarray:
    """The probe's logit mapped to a probability of hallucination (Platt scaling)."""
    logits = calibration["slope"] * np.asarray(scores, np.float64) + calibration["intercept"]
    return 1 / (1 + np.exp(-logits))


@dataclass
class Assessment:
    risk: float  # calibrated probability that the answer will be hallucinated
    flagged: bool  # risk above the threshold of the chosen coverage
    answer: str | None  # None when not asked for, or abstained


class Guard:
    """`Guard.load(folder)` then `guard.assess(images, questions)`; `coverage` picks the saved threshold."""

    def __init__(self, card: dict, probe: torch.nn.Module, loaded: LoadedModel, coverage: float = 0.8):
        self.card, self.probe, self.loaded = card, probe.eval(), loaded
        key = f"{coverage:g}"
        if key not in card["thresholds"]:
            raise ConfigError(
                f"the guard keeps thresholds for coverages {list(card['thresholds'])}, not {key}"
            )
        self.threshold = card["thresholds"][key]
        attention = card["representation"] in ATTENTION_CELLS
        layers = (
            card["attention_layers"] if attention else [card["layer"] if card["layer"] is not None else 0]
        )
        self.answering = Extractor(loaded, layers, card["max_new_tokens"], top_k=1, image_attention=attention)
        self.prefill_only = Extractor(loaded, layers, 1, top_k=1, image_attention=attention)
        self._check_model()

    @classmethod
    def load(
        cls, folder: Path, model: str | None = None, loaded: LoadedModel | None = None, coverage: float = 0.8
    ) -> Guard:
        """The guard in `folder` on the model it was fitted on (its recorded source, or `model`: a copy of
        the same weights elsewhere); `loaded` reuses a model already in memory."""
        card, weights = read_card(Path(folder))
        source = model or card["source"]
        if loaded is None:
            fingerprint = model_fingerprint(source, card["revision"])
            if fingerprint != card["fingerprint"]:
                raise GuardMismatch(
                    f"the guard in {folder} was fitted on {card['source']} ({card['fingerprint']}), "
                    f"not on {source} ({fingerprint}): its risks mean nothing on other weights. "
                    "Fit a guard on this model (`halp guard-fit`)"
                )
            loaded = load_model(ModelSettings(model=source, revision=card["revision"], dtype=card["dtype"]))
        state = load(weights)
        width = card["width"]
        probe = build_probe(
            card["probe"], torch.zeros(width), torch.ones(width), card["probe_settings"]["mlp_rank"], 0
        )
        probe.load_state_dict(state)
        return cls(card, probe, loaded, coverage)

    def _check_model(self) -> None:
        """Depth and width must match the card's, whatever path the weights came by."""
        found = {"n_blocks": self.loaded.n_blocks, "hidden_size": self.loaded.hidden_size}
        for key, value in found.items():
            if value != self.card[key]:
                raise GuardMismatch(
                    f"the guard was fitted on {self.card['source']} ({self.card[key]} {key}); this model has "
                    f"{value}: its risks mean nothing here. Fit a guard on this model (`halp guard-fit`)"
                )

    def risk(self, features: np.ndarray | torch.Tensor) -> np.ndarray:
        """Calibrated risk of stored or live representations [N, width]."""
        with torch.inference_mode():
            scores = self.probe(torch.as_tensor(features, dtype=torch.float32)).squeeze(1).numpy()
        return calibrated(scores, self.card["calibration"])

    def _feature(self, representations: dict[str, torch.Tensor | np.ndarray]) -> torch.Tensor | np.ndarray:
        """The card's cell from the prefill's representations, laid out as the probe grid reads it."""
        representation, layer = self.card["representation"], self.card["layer"]
        if representation not in ATTENTION_CELLS:
            found = representations[representation]
            return found if layer is None else found[:, 0]
        index = None if layer is None else self.card["attention_layers"].index(layer)
        query = representations["query_token"][:, index].numpy() if index is not None else None
        return attention_cell(representation, stacked(representations), index, query)

    def assess(
        self, images: Sequence[Image], questions: Sequence[str], answer: bool = True, abstain: bool = False
    ) -> list[Assessment]:
        """One batch: each question's risk and flag, and (with `answer`) its answer; with `abstain`, a
        flagged question generates nothing after its prefill and gets no answer."""
        return self.assess_prepared(self.answering.prepare(images, questions), answer, abstain)

    def assess_prepared(
        self, inputs: BatchFeature, answer: bool = True, abstain: bool = False
    ) -> list[Assessment]:
        """`assess` on a batch already prepared (`guard.answering.prepare`)."""
        risks: list[np.ndarray] = []

        def decide(representations: dict[str, torch.Tensor]) -> torch.Tensor:
            risks.append(risk := self.risk(self._feature(representations)))
            return (
                torch.from_numpy(risk > self.threshold)
                if abstain
                else torch.zeros(len(risk), dtype=torch.bool)
            )

        extractor = self.answering if answer else self.prefill_only
        out = extractor.run(inputs, after_prefill=decide)
        (risk,) = risks  # generate asks its stopping criteria after every token, the first included
        flagged = risk > self.threshold
        return [
            Assessment(float(r), bool(f), a if answer and not (abstain and f) else None)
            for r, f, a in zip(risk, flagged, out.answers, strict=True)
        ]
