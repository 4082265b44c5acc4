"""One prefill pass per batch yields every representation; generation continues from the same cache."""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import numpy as np
import torch
from PIL.Image import Image
from torch import Tensor, nn
from transformers import BatchFeature, StoppingCriteria, StoppingCriteriaList

from halp.config import ConfigError, ModelSettings
from halp.extract.attention import ENTROPY, SHARE, Watched, watching
from halp.extract.capture import at_positions, capture_first_call
from halp.models.layers import resolve_layers
from halp.models.loading import LoadedModel
from halp.store.parts import IMAGE_ATTENTION

VISION = "vision_encoder"
FIRST_TOKEN = "first_token"
MODULE = "module:"  # + a module's name: its output at the two positions
LM_INPUT = "input"  # the residual stream entering the first block: the embeddings and the projected image


@dataclass
class BatchOutput:
    """Per-sample results of one batch, on the CPU, in the batch's order."""

    vision_only: np.ndarray  # [B, D_vis]
    vision_token: np.ndarray  # [B, n_layers, H]
    query_token: np.ndarray  # [B, n_layers, H]
    first_token_logprobs: np.ndarray  # [B, k]
    first_token_ids: np.ndarray  # [B, k]
    vision_token_pos: np.ndarray  # [B], in the sample's own (unpadded) sequence
    query_token_pos: np.ndarray  # [B]
    seq_len: np.ndarray  # [B], prompt tokens without padding
    n_image_tokens: np.ndarray  # [B]
    n_generated_tokens: np.ndarray  # [B], up to and including the first end-of-sequence token
    answers: list[str]
    # the IMAGE_ATTENTION arrays, each [B, n_layers, heads], when asked for
    image_attention: dict[str, np.ndarray] = field(default_factory=dict)
    # module name -> its output at (vision token, query token), [B, 2, D], for the modules asked for
    modules: dict[str, np.ndarray] = field(default_factory=dict)


VT_ROW, QT_ROW = 0, 1  # the query rows whose attention to the image is kept
# stored name -> (query row, statistic) of the [B, n_layers, rows, statistics, heads] computed
ATTENTION_LAYOUT = dict(
    zip(
        IMAGE_ATTENTION, [(QT_ROW, SHARE), (QT_ROW, ENTROPY), (VT_ROW, SHARE), (VT_ROW, ENTROPY)], strict=True
    )
)


def token_positions(input_ids: Tensor, attention_mask: Tensor, image_token_id: int) -> tuple[Tensor, Tensor]:
    """(last image-placeholder position, last prompt position) per row, found from the ids themselves."""
    columns = torch.arange(input_ids.shape[1], device=input_ids.device)
    is_image = input_ids == image_token_id
    if not bool(is_image.any(dim=1).all()):
        rows = (~is_image.any(dim=1)).nonzero().flatten().tolist()
        raise ValueError(f"rows {rows} hold no image token (id {image_token_id}): the prompt lost its image")
    vision = torch.where(is_image, columns, -1).amax(dim=1)
    query = torch.where(attention_mask.bool(), columns, -1).amax(dim=1)
    return vision, query


# the prefill's representations (`Extractor._representations`, and the IMAGE_ATTENTION arrays when on) -> a
# bool per row: stop it after the prefill
AfterPrefill = Callable[[dict[str, Tensor | np.ndarray]], Tensor]


class _AfterPrefill(StoppingCriteria):
    """Asks once, at generate's first check (after the first token, when the prefill's hooks have all
    fired), which rows stop; generate pads those from then on and ends when every row has stopped."""

    def __init__(self, decide: Callable[[], Tensor]):
        self.decide = decide
        self.stop: Tensor | None = None

    def __call__(self, input_ids: Tensor, scores: Tensor, **kwargs: Any) -> Tensor:
        if self.stop is None:
            self.stop = self.decide().to(input_ids.device, torch.bool)
        return self.stop


def _count_until_eos(generated: Tensor, eos_ids: set[int]) -> Tensor:
    """Tokens generated per row, counting the first end-of-sequence token and none of the padding after."""
    is_eos = torch.zeros_like(generated, dtype=torch.bool)
    for eos in eos_ids:
        is_eos |= generated == eos
    first = torch.where(is_eos.any(dim=1), is_eos.int().argmax(dim=1) + 1, generated.shape[1])
    return first


class Extractor:
    """Captures VF, VT and QT with hooks during `generate`'s own prefill: no second pass."""

    def __init__(
        self,
        loaded: LoadedModel,
        layers: Sequence[int],
        max_new_tokens: int,
        top_k: int,
        pin_memory: bool = False,
        image_attention: bool = False,
        modules: Mapping[str, nn.Module] | None = None,
    ):
        self.loaded = loaded
        self.image_attention = image_attention
        self.modules = dict(modules or {})  # name -> module whose output is kept at VT and QT
        self.layers = list(layers)
        self.max_new_tokens = max_new_tokens
        vocabulary = loaded.model.get_output_embeddings().weight.shape[0]
        if top_k > vocabulary:  # else every sample would fail in topk, one runtime error at a time
            raise ConfigError(
                f"extract.top_k {top_k} exceeds the vocabulary of this {loaded.model_type} model "
                f"({vocabulary} tokens): set extract.top_k to at most {vocabulary} in params.yaml"
            )
        self.top_k = top_k
        # page-locked inputs copy to a GPU asynchronously (meant for batches prepared in the background)
        self.pin_memory = pin_memory and loaded.device.type == "cuda"
        # a fast tokenizer raises "Already borrowed" when one thread encodes while another decodes
        self._processor_lock = threading.Lock()
        self.image_token_id = loaded.adapter.image_token(loaded.model)
        eos = loaded.model.generation_config.eos_token_id
        self.eos_ids = set(eos if isinstance(eos, list) else [eos])

    @classmethod
    def configured(
        cls,
        loaded: LoadedModel,
        settings: ModelSettings,
        top_k: int,
        max_new_tokens: int | None = None,
        pin_memory: bool = False,
    ) -> Extractor:
        """VF, VT and QT at the layers a `models` entry names (resolved against this model's depth): what
        the benchmarks time; `halp extract` adds the entry's image attention and modules."""
        layers = resolve_layers(settings.layers, loaded.n_blocks, settings.model)
        return cls(loaded, layers, max_new_tokens or settings.max_new_tokens, top_k, pin_memory)

    def prepare(self, images: Sequence[Image], questions: Sequence[str]) -> BatchFeature:
        """The model's inputs on the CPU; safe to call from a background thread while `run` works."""
        with self._processor_lock:
            inputs = self.loaded.adapter.build_inputs(self.loaded.processor, images, questions)
        if self.pin_memory:
            inputs = BatchFeature(
                {k: v.pin_memory() if isinstance(v, Tensor) else v for k, v in inputs.items()}
            )
        return inputs

    def _representations(self, captured: dict[str, Any], batch: int) -> dict[str, Tensor]:
        """VF [B, D_vis], VT and QT [B, n_layers, H] from what the prefill's hooks kept."""
        states = torch.stack([captured[str(k)] for k in self.layers], dim=1)  # [B, n_layers, 2, H]
        vision_only = captured[VISION]
        if vision_only.shape[0] != batch:
            raise RuntimeError(f"vision encoder pooled {vision_only.shape[0]} images for a batch of {batch}")
        return {"vision_only": vision_only, "vision_token": states[:, :, 0], "query_token": states[:, :, 1]}

    @torch.inference_mode()
    def run(
        self, inputs: BatchFeature, after_prefill: AfterPrefill | None = None, **generate_kwargs: Any
    ) -> BatchOutput:
        """Extract from a prepared, left-padded batch; generate_kwargs (min_new_tokens...) go to generate.
        `after_prefill` is shown the representations as soon as the prefill has run and names the rows
        that generate nothing after their first token (a guard's abstentions)."""
        model, adapter = self.loaded.model, self.loaded.adapter
        inputs = inputs.to(self.loaded.device, non_blocking=self.pin_memory)
        ids, mask = inputs["input_ids"], inputs["attention_mask"]
        batch, prompt_len = ids.shape
        vision_pos, query_pos = token_positions(ids, mask, self.image_token_id)
        rows = torch.arange(batch)[:, None]
        wanted = torch.stack([vision_pos, query_pos], dim=1).cpu()  # [B, 2]

        at_wanted = at_positions(rows, wanted)  # only [B, 2, H] leaves each block

        def keep_positions(output: Any, name: str = "decoder block") -> Tensor:
            hidden = output[0] if isinstance(output, tuple) else output  # [B, S, H]
            if hidden.dim() < 3 or hidden.shape[:2] != (batch, prompt_len):
                raise RuntimeError(
                    f"{name}'s output is {tuple(hidden.shape)}, not [batch {batch}, the prefill's "
                    f"{prompt_len} positions, ...]: capture modules of the decoder (`halp modules`)"
                )
            return at_wanted(hidden)

        blocks = adapter.blocks(model)
        hooks = {str(k): (blocks[k], keep_positions) for k in self.layers}
        hooks |= {
            MODULE + name: (module, partial(keep_positions, name=f"module {name}"))
            for name, module in self.modules.items()
        }
        hooks[VISION] = (
            adapter.vision_module(model),
            lambda output: adapter.pool_vision(output, inputs, model).float().cpu(),
        )
        # The prefill's logits at the last prompt position are the first step's: keep their top-k only
        # (generate's output_logits would hold [B, vocab] for every step, 152k wide on Qwen).
        hooks[FIRST_TOKEN] = (
            model.get_output_embeddings(),
            lambda logits: torch.log_softmax(logits[:, -1].float(), dim=-1).topk(self.top_k, dim=-1),
        )
        attention = (
            watching(
                {k: blocks[k] for k in self.layers},
                adapter.cross_attention,
                wanted,
                ids == self.image_token_id,
            )
            if self.image_attention
            else nullcontext(None)
        )
        with capture_first_call(hooks) as captured, attention as attended:
            if after_prefill is not None:
                stop = _AfterPrefill(
                    lambda: after_prefill(
                        self._representations(captured, batch) | self._image_attention(attended)
                    )
                )
                generate_kwargs["stopping_criteria"] = StoppingCriteriaList([stop])
            sequences = model.generate(
                **inputs, max_new_tokens=self.max_new_tokens, do_sample=False, **generate_kwargs
            )
        representations = self._representations(captured, batch)
        logprobs = captured[FIRST_TOKEN]
        generated = sequences[:, prompt_len:]
        padding = (prompt_len - mask.sum(dim=1)).cpu()
        return BatchOutput(
            vision_only=representations["vision_only"].numpy(),
            vision_token=representations["vision_token"].numpy(),
            query_token=representations["query_token"].numpy(),
            first_token_logprobs=logprobs.values.cpu().numpy(),
            first_token_ids=logprobs.indices.cpu().numpy(),
            vision_token_pos=(vision_pos.cpu() - padding).numpy(),
            query_token_pos=(query_pos.cpu() - padding).numpy(),
            seq_len=mask.sum(dim=1).cpu().numpy(),
            n_image_tokens=(ids == self.image_token_id).sum(dim=1).cpu().numpy(),
            n_generated_tokens=_count_until_eos(generated, self.eos_ids).cpu().numpy(),
            answers=self._decode(generated),
            image_attention=self._image_attention(attended),
            modules={name: captured[MODULE + name].numpy() for name in self.modules},
        )

    def _image_attention(self, attended: Watched | None) -> dict[str, np.ndarray]:
        """The watched layers' statistics as the stored arrays, each [B, n_layers, heads]."""
        if attended is None:
            return {}
        stacked = attended.statistics.cpu().numpy()  # [B, n_layers, rows, statistics, heads]
        return {name: stacked[:, :, row, statistic] for name, (row, statistic) in ATTENTION_LAYOUT.items()}

    @torch.inference_mode()
    def image_tokens(self, inputs: BatchFeature) -> list[np.ndarray]:
        """Per sample, [1 + n_layers, n_image_tokens, H]: the LM's input at every image-token position
        (found from `input_ids`), then the residual stream there after each of `layers` (the last block
        before the final norm, as everywhere), from one prefill forward; nothing is generated."""
        model, adapter = self.loaded.model, self.loaded.adapter
        inputs = inputs.to(self.loaded.device, non_blocking=self.pin_memory)
        is_image = inputs["input_ids"] == self.image_token_id  # [B, S]
        # row-major: each sample's tokens in order; [B, S, H] -> [all image tokens, H]
        keep_image_positions = at_positions(*is_image.nonzero(as_tuple=True))
        blocks = adapter.blocks(model)
        hooks = {str(k): (blocks[k], keep_image_positions) for k in self.layers}
        with capture_first_call(hooks, inputs={LM_INPUT: (blocks[0], keep_image_positions)}) as captured:
            model(**inputs, **({"logits_to_keep": 1} if model._supports_logits_to_keep() else {}))
        states = torch.stack([captured[LM_INPUT], *(captured[str(k)] for k in self.layers)])  # [1+L, T, H]
        return [s.numpy() for s in states.split(is_image.sum(dim=1).tolist(), dim=1)]

    def _decode(self, generated: Tensor) -> list[str]:
        with self._processor_lock:
            return self.loaded.processor.batch_decode(generated, skip_special_tokens=True)
