"""Which adapter serves which transformers `model_type`."""

from __future__ import annotations

from halp.models.adapter import Adapter
from halp.models.fast_vlm import FAST_VLM
from halp.models.gemma3 import GEMMA3
from halp.models.llava_next import LLAVA_NEXT
from halp.models.mllama import MLLAMA
from halp.models.molmo2 import MOLMO2
from halp.models.phi4mm import PHI4MM
from halp.models.qwen_vl import QWEN_VL
from halp.models.smolvlm import SMOLVLM

ADAPTERS: dict[str, Adapter] = {
    "qwen2_vl": QWEN_VL,
    "qwen2_5_vl": QWEN_VL,
    "mllama": MLLAMA,
    "phi4_multimodal": PHI4MM,
    "llava_next": LLAVA_NEXT,
    "gemma3": GEMMA3,
    "smolvlm": SMOLVLM,
    "fast_vlm": FAST_VLM,
    "molmo2": MOLMO2,
}


def adapter_for(model_type: str, source: str) -> Adapter:
    if model_type not in ADAPTERS:
        raise ValueError(
            f"{source} is a {model_type!r} model, which halp has no adapter for; "
            f"supported architectures: {', '.join(sorted(ADAPTERS))}"
        )
    return ADAPTERS[model_type]
