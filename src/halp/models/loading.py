"""Load a model and its processor through `from_pretrained`, the same path for hub ids and local folders."""

from __future__ import annotations

import importlib.util
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import transformers
from transformers import AutoConfig, AutoProcessor, PretrainedConfig, PreTrainedModel

from halp.config import ConfigError, ModelSettings
from halp.models.adapter import Adapter, resolve
from halp.models.folder import check_model_folder
from halp.models.layers import resolve_layers
from halp.models.registry import adapter_for

log = logging.getLogger(__name__)


@dataclass
class LoadedModel:
    model: PreTrainedModel
    processor: Any
    adapter: Adapter
    model_type: str
    device: torch.device
    attn_implementation: str

    @property
    def n_blocks(self) -> int:
        return len(self.adapter.blocks(self.model))

    @property
    def hidden_size(self) -> int:
        return int(resolve(self.model, self.adapter.final_norm).weight.shape[0])


def pick_device(setting: str, local_rank: int = 0) -> torch.device:
    """auto: this process's GPU (LOCAL_RANK under a launcher) if there is one, else the CPU."""
    if setting == "auto":
        return torch.device(f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu")
    device = torch.device(setting)
    if device.type == "cuda" and (device.index or 0) >= torch.cuda.device_count():
        seen = f"{torch.cuda.device_count()} CUDA device(s)" if torch.version.cuda else "a CPU-only torch"
        raise ConfigError(f"device {setting!r} is not available here ({seen}): use device: auto or cpu")
    return device


def pick_attention(setting: str, device: torch.device, adapter: Adapter) -> str:
    """flash_attention_2 where it is installed, can run (CUDA) and keeps the model's masks, else sdpa."""
    if setting == "flash_attention_2" and not adapter.flash_attention:
        raise ConfigError(
            "attn_implementation flash_attention_2 would drop this model's bidirectional image-token mask "
            f"in transformers {transformers.__version__}: use auto, sdpa or eager"
        )
    if setting != "auto":
        return setting
    flash = importlib.util.find_spec("flash_attn") is not None and adapter.flash_attention
    return "flash_attention_2" if device.type == "cuda" and flash else "sdpa"


def read_config(settings: ModelSettings, whole_folder: bool = True) -> tuple[PretrainedConfig, Adapter]:
    """The model's config and adapter, without loading any weights; a local folder is checked whole (unless
    the config is all that is asked for), so a missing or cut-off file is named before the run rather
    than failing every sample."""
    try:
        config = AutoConfig.from_pretrained(settings.model, revision=settings.revision)
    except OSError as err:
        raise FileNotFoundError(
            f"cannot load model {settings.model!r}: {err}\n"
            "Give a local folder holding config.json, or a hub id reachable from here "
            "(offline: download it first, e.g. `hf download ID`)."
        ) from err
    adapter = adapter_for(config.model_type, settings.model)
    if whole_folder and Path(settings.model).is_dir():
        check_model_folder(Path(settings.model))
    return config, adapter


def load_model(settings: ModelSettings, local_rank: int = 0) -> LoadedModel:
    source, revision = settings.model, settings.revision
    config, adapter = read_config(settings)
    # Layers out of range fail here, from the config, before gigabytes of weights load.
    resolve_layers(settings.layers, getattr(config, "text_config", config).num_hidden_layers, source)
    device = pick_device(settings.device, local_rank)
    dtype = getattr(torch, settings.dtype)
    attention = pick_attention(settings.attn_implementation, device, adapter)
    if settings.device_map is None:
        model = adapter.auto_class.from_pretrained(
            source, revision=revision, dtype=dtype, attn_implementation=attention
        ).to(device)
    else:  # accelerate spreads the blocks over the visible devices; inputs go where the embeddings are
        model = adapter.auto_class.from_pretrained(
            source,
            revision=revision,
            dtype=dtype,
            attn_implementation=attention,
            device_map=settings.device_map,
        )
    processor = AutoProcessor.from_pretrained(source, revision=revision)
    return ready(model, processor, source, revision)


def ready(model: PreTrainedModel, processor: Any, source: str, revision: str | None = None) -> LoadedModel:
    """A loaded (or built in memory) model and its processor, set up for extraction."""
    model_type = model.config.model_type
    adapter = adapter_for(model_type, source)
    model = model.eval()
    processor.tokenizer.padding_side = "left"  # batched prompts must end at the same position
    if adapter.after_load is not None:
        adapter.after_load(model, processor, source, revision)
    attention = model.config._attn_implementation
    log.info(
        "loaded %s (%s) on %s, %s, attention=%s", source, model_type, model.device, model.dtype, attention
    )
    return LoadedModel(model, processor, adapter, model_type, model.device, attention)
