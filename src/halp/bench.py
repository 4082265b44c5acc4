"""`halp bench`: the seed scripts' per-sample loop against the engine, same model and samples, one run.

The seed-style loop does what the public scripts do for every sample: a separate vision forward, a
forward with all hidden states, then a separate `generate`. The engine does one batched prefill with
hooks and generates from its cache.
"""

from __future__ import annotations

import time

import torch
from transformers import BatchFeature

from halp.config import Params
from halp.data.images import load_image
from halp.extract.engine import Extractor, token_positions
from halp.extract.prefetch import prefetched
from halp.extract.run import read_samples
from halp.models.loading import LoadedModel, load_model, pick_attention, ready
from halp.models.registry import adapter_for
from halp.models.synthetic import build_in_memory


def built(arch: str, size: str, device: torch.device, dtype: torch.dtype, attention: str) -> LoadedModel:
    """A randomly initialised model of the real architecture, built on the device in the target dtype (no
    float32 copy, no disk round trip), set up as a loaded one would be."""
    model, processor = build_in_memory(arch, size, device, dtype)
    source = f"synthetic {size} {arch}"
    model.set_attn_implementation(
        pick_attention(attention, device, adapter_for(model.config.model_type, source))
    )
    return ready(model, processor, source)


@torch.inference_mode()
def plain_forward(loaded: LoadedModel, extractor: Extractor, inputs: BatchFeature) -> dict[str, torch.Tensor]:
    """VF, VT and QT of one sample the seed scripts' way: a separate vision forward, then a forward with all
    hidden states, read at the positions found from `input_ids` (block k is hidden_states[k + 1]; the last
    one there has the final norm applied, which the engine's hook on the last block has not)."""
    model, adapter = loaded.model, loaded.adapter
    inputs = inputs.to(loaded.device)
    vision_only = adapter.standalone_vision(model, inputs).float().cpu()
    hidden = model(**inputs, output_hidden_states=True).hidden_states
    vision, query = token_positions(inputs["input_ids"], inputs["attention_mask"], extractor.image_token_id)
    layers = [hidden[k + 1][0] for k in extractor.layers]
    return {
        "vision_only": vision_only[0],
        "vision_token": torch.stack([h[vision[0]] for h in layers]).float().cpu(),
        "query_token": torch.stack([h[query[0]] for h in layers]).float().cpu(),
    }


@torch.inference_mode()
def seed_style(loaded: LoadedModel, extractor: Extractor, images, questions, max_new_tokens: int) -> None:
    for image, question in zip(images, questions, strict=True):
        inputs = extractor.prepare([image], [question]).to(loaded.device)
        plain_forward(loaded, extractor, inputs)
        loaded.model.generate(
            **inputs, max_new_tokens=max_new_tokens, min_new_tokens=max_new_tokens, do_sample=False
        )


def engine(
    extractor: Extractor, images, questions, batch_size: int, max_new_tokens: int, prefetch: bool = False
) -> None:
    batches = (
        extractor.prepare(images[start : start + batch_size], questions[start : start + batch_size])
        for start in range(0, len(images), batch_size)
    )
    for batch in prefetched(batches, prefetch):
        extractor.run(batch, min_new_tokens=max_new_tokens)


def timed(device: torch.device, fn, /, *args, **kwargs) -> float:
    """Seconds `fn(*args, **kwargs)` takes, waiting for a GPU's queued work before and after."""
    on_gpu = device.type == "cuda"
    if on_gpu:
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    fn(*args, **kwargs)
    if on_gpu:
        torch.cuda.synchronize(device)
    return time.perf_counter() - start


def benchmark(params: Params, model_name: str, n_samples: int, batch_size: int) -> dict[str, float]:
    """Prints and returns samples/s of both paths and their ratio; every sample generates exactly
    max_new_tokens tokens in both, so early stops cannot flatter either."""
    settings = params.model(model_name)
    samples = read_samples(params.data.out).head(n_samples)
    images = [load_image(p) for p in samples.image_path]
    questions = list(samples.question)
    loaded = load_model(settings)
    extractor = Extractor.configured(loaded, settings, params.extract.top_k)
    new_tokens = settings.max_new_tokens
    seed_style(loaded, extractor, images[:1], questions[:1], new_tokens)  # warm-up both paths
    engine(extractor, images[:batch_size], questions[:batch_size], batch_size, new_tokens)
    seed_s = timed(loaded.device, seed_style, loaded, extractor, images, questions, new_tokens)
    engine_s = timed(loaded.device, engine, extractor, images, questions, batch_size, new_tokens)
    result = {
        "samples": len(images),
        "seed_style_samples_per_s": len(images) / seed_s,
        "engine_samples_per_s": len(images) / engine_s,
        "speedup": seed_s / engine_s,
    }
    print(
        f"{model_name} on {loaded.device}: {len(images)} samples, {new_tokens} new tokens each, "
        f"engine batch {batch_size}\n"
        f"  seed-style loop : {result['seed_style_samples_per_s']:8.2f} samples/s\n"
        f"  engine          : {result['engine_samples_per_s']:8.2f} samples/s\n"
        f"  speed-up        : {result['speedup']:8.2f}x"
    )
    return result
