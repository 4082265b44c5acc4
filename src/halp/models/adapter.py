"""One small interface per architecture: where its parts are and how its vision encoder is pooled.

Everything else (batching, hooks, generation, storage) is shared by all architectures.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import transformers
from PIL.Image import Image
from torch import Tensor, nn
from transformers import AutoModelForImageTextToText, BatchFeature

# (encoder output, the batch's processor outputs, the model) -> [B, D_vis], one vector per sample.
VisionPooler = Callable[[Any, BatchFeature, nn.Module], Tensor]
# (processor outputs, the model) -> (args, kwargs) that call the vision encoder alone, as the model would.
VisionCall = Callable[[BatchFeature, nn.Module], tuple[tuple, dict]]
# (model, processor, source, revision) -> None: fixes applied right after loading.
AfterLoad = Callable[[Any, Any, str, str | None], None]
# (processor outputs, the model) -> each image's grid of image tokens (t, h, w), in the LM's order.
TokenGrid = Callable[[BatchFeature, nn.Module], list[tuple[int, int, int]]]


def resolve(root: Any, path: str) -> Any:
    """Follow a dotted attribute path, failing with a message that names the path and the library version."""
    node = root
    for i, part in enumerate(path.split(".")):
        if not hasattr(node, part):
            walked = ".".join(path.split(".")[:i]) or type(root).__name__
            raise AttributeError(
                f"{type(root).__name__} has no {path!r} ({walked} has no {part!r}) in transformers "
                f"{transformers.__version__}: the module layout moved; update this adapter's paths"
            )
        node = getattr(node, part)
    return node


@dataclass(frozen=True)
class Adapter:
    """Model-specific facts, as data; paths are dotted attributes from the loaded top-level model."""

    decoder_blocks: str
    final_norm: str
    vision_encoder: str
    image_token_id: str  # dotted attribute of model.config
    pool_vision: VisionPooler
    vision_call: VisionCall
    auto_class: type = AutoModelForImageTextToText
    nest_images: bool = False  # the processor wants one list of images per prompt
    flash_attention: bool = True  # False: flash-attention-2 would drop a mask the model needs
    # a block's cross-attention module, by attribute, where the image enters through cross-attention blocks
    # instead of as tokens in the decoder (Mllama); None: it is tokens
    cross_attention: str | None = None
    token_grid: TokenGrid | None = None  # where the processor lays the image tokens out on a grid
    after_load: AfterLoad | None = None

    def blocks(self, model: nn.Module) -> Sequence[nn.Module]:
        return resolve(model, self.decoder_blocks)

    def vision_module(self, model: nn.Module) -> nn.Module:
        return resolve(model, self.vision_encoder)

    def standalone_vision(self, model: nn.Module, inputs: BatchFeature) -> Tensor:
        """VF from a separate pass over the vision encoder: the seed scripts' way, kept as a reference. Pixels
        are cast to the encoder's dtype first, as each model's own forward does (float32 pixels meet
        bfloat16 weights otherwise)."""
        encoder = self.vision_module(model)
        dtype = next(encoder.parameters()).dtype

        def cast(value: Any) -> Any:
            return value.to(dtype) if isinstance(value, Tensor) and value.is_floating_point() else value

        args, kwargs = self.vision_call(inputs, model)
        output = encoder(*map(cast, args), **{name: cast(value) for name, value in kwargs.items()})
        return self.pool_vision(output, inputs, model)

    def image_token(self, model: nn.Module) -> int:
        return int(resolve(model.config, self.image_token_id))

    def build_inputs(self, processor: Any, images: Sequence[Image], questions: Sequence[str]) -> BatchFeature:
        """The model's own chat template around (image, question), batched with left padding."""
        texts = [
            processor.apply_chat_template(
                [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": q}]}],
                add_generation_prompt=True,
            )
            for q in questions
        ]
        return self.encode(processor, texts, images)

    def encode(
        self, processor: Any, texts: Sequence[str], images: Sequence[Image], **options
    ) -> BatchFeature:
        """Rendered chat texts (one image each) through the processor, tokenised as
        `processor.apply_chat_template(..., tokenize=True)` does: a template that renders the BOS itself
        (Llama-3, Gemma) is tokenised without special tokens, or every row would start with two.
        `options` go to the processor (e.g. `padding_side`)."""
        bos = processor.tokenizer.bos_token
        renders_bos = bos is not None and texts[0].startswith(bos)
        batch_images = [[image] for image in images] if self.nest_images else list(images)
        return processor(
            text=list(texts),
            images=batch_images,
            padding=True,
            return_tensors="pt",
            add_special_tokens=not renders_bos,
            **options,
        )
