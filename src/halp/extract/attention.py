"""Attention to the image from the kept query rows, computed beside the model's own attention kernel.

Every supported decoder calls its attention through transformers' `ALL_ATTENTION_FUNCTIONS` with the
layer's own queries and keys (after rotary embeddings and any q/k norm), its mask and its scaling. While
`watching` is active the kernel each layer looks up there (sdpa, flash-attention, its own eager, ...) comes
back wrapped: the first call of a watched block (the prefill) also computes softmax(q k^T * scaling + mask)
for the kept query rows only, [B, heads, rows, keys], then the real kernel runs unchanged.
`output_attentions` would need eager attention and [B, heads, S, S] per layer; this costs
O(heads x sequence) per layer under any kernel.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from functools import cached_property

import torch
from torch import Tensor, nn
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

SHARE, ENTROPY = 0, 1  # what `image_attention` yields per (row, head), in this order
MASKED = torch.finfo(torch.float32).min  # as eager attention masks: a fully masked row comes out uniform


def _rows_of(tensor: Tensor, rows: Tensor) -> Tensor:
    """[B, X, S, ...] at each batch row's own positions `rows` [B, R] -> [B, X, R, ...]."""
    batch = torch.arange(tensor.shape[0], device=tensor.device)[:, None]
    return tensor.transpose(1, 2)[batch, rows.to(tensor.device)].transpose(1, 2)


def visible_bias(
    mask: Tensor | None, rows: Tensor, n_keys: int, causal: bool, sliding_window: int | None = None
) -> Tensor:
    """The additive mask [B, 1 or heads, R, K] of the kept rows, whatever form the kernel received it in:
    sdpa and eager get a 4-D boolean or additive mask (token-type, bidirectional and sliding-window patterns
    included); flash-attention a 2-D padding mask, or none, with causality and the window as arguments;
    sdpa none when the batch is causal only."""
    if mask is not None and mask.dim() == 4:
        kept = _rows_of(mask[..., :n_keys], rows)
        return torch.where(kept, 0.0, MASKED) if kept.dtype == torch.bool else kept.float()
    keys = torch.arange(n_keys, device=rows.device)
    reach = rows.to(keys.device)[:, None, :, None]  # [B, 1, R, 1]
    visible = torch.ones(len(rows), 1, rows.shape[1], n_keys, dtype=torch.bool, device=keys.device)
    if causal:
        visible &= keys <= reach
    if sliding_window is not None:
        visible &= keys > reach - sliding_window
    if mask is not None:  # [B, K]: 0 at padding
        visible &= mask[:, None, None, -n_keys:].bool().to(keys.device)
    return torch.where(visible, 0.0, MASKED)


def row_scores(
    query: Tensor, key: Tensor, rows: Tensor, scaling: float | None = None, softcap: float | None = None
) -> Tensor:
    """[B, heads, R, K] float32: the kept query rows' (`rows` [B, R]) attention scores before the mask,
    q k^T * scaling (softcapped where the model caps them); grouped-query heads share their key head, as
    the kernels do."""
    batch, heads, _, dim = query.shape
    q = _rows_of(query, rows).float().reshape(batch, key.shape[1], -1, dim)  # [B, KVH, groups * R, D]
    scores = (q @ key.float().transpose(-1, -2)).view(batch, heads, rows.shape[1], -1)
    scores *= dim**-0.5 if scaling is None else scaling
    return scores if softcap is None else softcap * torch.tanh(scores / softcap)


def image_attention(scores: Tensor, bias: Tensor, image_keys: Tensor | None) -> Tensor:
    """[..., B, R, 2, heads] from scores [..., B, heads, R, K] and their additive mask: for each row and
    head, the share of its attention on image keys and the entropy (nats) of its attention over the image
    keys, renormalised to sum to 1 (0 where no image key is visible). `image_keys` [B, K] marks them;
    None: every key is the image's (a cross-attention block)."""
    weights = (scores + bias).softmax(dim=-1)
    on_image = weights if image_keys is None else weights * image_keys[:, None, None, :].to(weights)
    share = on_image.sum(dim=-1)  # [..., B, H, R]
    within = on_image / share.clamp_min(torch.finfo(torch.float32).tiny)[..., None]
    entropy = -torch.xlogy(within, within).sum(dim=-1)
    return torch.stack([share, entropy], dim=-1).movedim(-3, -1)


class Watched:
    """What the watched layers' first attention calls kept: their rows' scores and masks. The rest of the
    computation runs once for all layers (`statistics`), not once per layer inside the forward."""

    def __init__(self, is_image: Tensor, layers: list[int]):
        self.is_image = is_image  # [B, S]
        self.layers = layers
        self.kept: dict[int, tuple[Tensor, Tensor, bool]] = {}  # layer -> (scores, bias, cross-attention)

    @cached_property
    def statistics(self) -> Tensor:
        """[B, n_layers, R, 2, heads], `image_attention` of each watched layer, in order; computed once,
        after the prefill (a guard asks right then, the engine again at the end)."""
        layers = self.layers
        groups: dict[tuple[int, bool], list[int]] = {}  # layers of one key length and kind stack
        for k in layers:
            scores, _, cross = self.kept[k]
            groups.setdefault((scores.shape[-1], cross), []).append(k)
        out: dict[int, Tensor] = {}
        device = self.is_image.device  # where the inputs are: blocks may sit on several devices
        for (_, cross), group in groups.items():
            scores = torch.stack([self.kept[k][0].to(device) for k in group])
            bias = torch.stack([self.kept[k][1].to(device).expand_as(scores[0]) for k in group])
            image = None if cross else self.is_image
            out |= dict(zip(group, image_attention(scores, bias, image), strict=True))
        return torch.stack([out[k] for k in layers], dim=1)


AttentionFunction = Callable[..., tuple[Tensor, Tensor | None]]


@contextmanager
def watching(
    blocks: Mapping[int, nn.Module], cross_attention: str | None, rows: Tensor, is_image: Tensor
) -> Iterator[Watched]:
    """Inside, the first attention call of each block in `blocks` (index -> block, in the order the
    statistics come) keeps its scores and
    mask for the query rows `rows` [B, R]; `Watched.statistics` then gives `image_attention` with the image
    keys `is_image` [B, S] (in a block's `cross_attention` submodule every key is the image's). Every other
    call (vision encoder, decode steps) only runs the real kernel. The library's lookup comes back on exit."""
    watched: dict[nn.Module, tuple[int, bool]] = {}
    for k, block in blocks.items():
        cross = (
            set(getattr(block, cross_attention).modules()) if hasattr(block, cross_attention or "") else ()
        )
        watched |= {module: (k, module in cross) for module in block.modules()}
    found = Watched(is_image, list(blocks))
    # Layers handed the same mask share its rows' bias; the mask is kept with it, so its id stays its own.
    biases: dict[tuple, tuple[Tensor | None, Tensor]] = {}

    def bias_of(mask: Tensor | None, n_keys: int, causal: bool, sliding_window: int | None) -> Tensor:
        key = (id(mask), n_keys, causal, sliding_window)
        if key not in biases:
            biases[key] = (mask, visible_bias(mask, rows, n_keys, causal, sliding_window))
        return biases[key][1]

    def wrap(kernel: AttentionFunction) -> AttentionFunction:
        def attention(module, query, key, value, attention_mask=None, *args, **kwargs):
            place = watched.get(module)
            if place is not None and place[0] not in found.kept:
                layer, cross = place
                causal = kwargs.get("is_causal")
                causal = not cross and (getattr(module, "is_causal", True) if causal is None else causal)
                bias = bias_of(attention_mask, key.shape[2], causal, kwargs.get("sliding_window"))
                scores = row_scores(query, key, rows, kwargs.get("scaling"), kwargs.get("softcap"))
                found.kept[layer] = (scores, bias, cross)
            return kernel(module, query, key, value, attention_mask, *args, **kwargs)

        return attention

    # Each attention layer asks `get_interface(its implementation, its own eager function)` at every call:
    # answering with the kernel it would get, wrapped, covers every kernel, eager included.
    library = ALL_ATTENTION_FUNCTIONS.get_interface
    ALL_ATTENTION_FUNCTIONS.get_interface = lambda name, default: wrap(library(name, default))
    try:
        yield found
    finally:
        del ALL_ATTENTION_FUNCTIONS.get_interface  # the class's method shows again
