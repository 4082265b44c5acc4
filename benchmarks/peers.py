"""halp's engine against what a researcher would write instead to get VF, VT and QT at the configured layers
plus a greedy answer: nnsight tracing `generate`, and a plain script of forward hooks around `generate`.
Same model, same samples, one run.

    pip install --no-deps --target .peers nnsight==0.8.1 greenlet websocket-client zstandard httpx \
        httpcore h11 anyio sniffio       # nnsight beside the lock, for this benchmark only
    PYTHONPATH=.peers python benchmarks/peers.py --model demo_vlm --model demo_mllama

The three ways, each as its own documentation suggests:
- halp: `Extractor.run` on batches of `models.NAME.batch_size`, as `halp extract` runs it (hooks keep only the
  two positions, the answer generated from the prefill's cache);
- nnsight: the model wrapped in `TransformersModel` (image-text-to-text), `with model.generate(...)` on the
  same batches (a processor encoding goes in as one invoke), saving the vision encoder's and each block's
  output of the prefill and `tracer.result`; positions read from `input_ids` afterwards;
- hooks: `register_forward_hook` on the vision encoder and the blocks, keeping each one's first call (the
  prefill) whole, one sample at a time, positions from `input_ids`.
All three share the processor call and the vision pooling (`Adapter.pool_vision`), which any of them
needs. Before timing, each peer's VF, VT and QT must match halp's (1e-4, the batched-against-single
tolerance of the tests) and its answers be the same strings; a peer that differs is reported, not timed.
Then `--rounds` rounds, each starting with the next method, so load from elsewhere lands on all alike.
Prints samples/s of each, the median ratio of halp's rate to each peer's with its range over rounds, how
far each raises memory above where it started (the peak of the resident set on a CPU, of allocated memory
on a GPU; the model itself is not counted) and the device.
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from halp.bench import timed
from halp.config import load_params
from halp.data.images import load_image
from halp.environment import cpu_name
from halp.extract.engine import Extractor, token_positions
from halp.extract.run import read_samples
from halp.models.loading import LoadedModel, load_model

REPRESENTATIONS = ("vision_only", "vision_token", "query_token")
TOLERANCE = 1e-4
Outputs = dict[str, Any]  # the three representations [N, ...] and "answers"


def batches(n: int, size: int) -> list[slice]:
    return [slice(start, min(start + size, n)) for start in range(0, n, size)]


def joined(parts: list[Outputs]) -> Outputs:
    out = {name: np.concatenate([p[name] for p in parts]) for name in REPRESENTATIONS}
    return out | {"answers": [a for p in parts for a in p["answers"]]}


def at_positions(loaded: LoadedModel, extractor: Extractor, inputs, vision, layers: list) -> Outputs:
    """VF pooled, VT and QT read at the positions found from `input_ids`, from whole saved outputs."""
    rows = torch.arange(inputs["input_ids"].shape[0])
    vt, qt = token_positions(inputs["input_ids"], inputs["attention_mask"], extractor.image_token_id)
    states = [h[0] if isinstance(h, tuple) else h for h in layers]
    return {
        "vision_only": loaded.adapter.pool_vision(vision, inputs, loaded.model).float().cpu().numpy(),
        "vision_token": torch.stack([h[rows, vt] for h in states], 1).float().cpu().numpy(),
        "query_token": torch.stack([h[rows, qt] for h in states], 1).float().cpu().numpy(),
    }


def answers(loaded: LoadedModel, sequences: torch.Tensor, prompt_len: int) -> list[str]:
    return loaded.processor.batch_decode(sequences[:, prompt_len:], skip_special_tokens=True)


def halp_engine(loaded: LoadedModel, extractor: Extractor, images, questions, batch: int) -> Outputs:
    parts = []
    for rows in batches(len(images), batch):
        out = extractor.run(extractor.prepare(images[rows], questions[rows]))
        parts.append({name: getattr(out, name) for name in REPRESENTATIONS} | {"answers": out.answers})
    return joined(parts)


def keep_first(kept: dict[str, Any], name: str) -> Callable:
    """A forward hook keeping the module's first output: during `generate`, the prefill's."""

    def hook(module: nn.Module, args: Any, output: Any) -> None:
        kept.setdefault(name, output)

    return hook


@torch.inference_mode()
def hooks_script(loaded: LoadedModel, extractor: Extractor, images, questions, batch: int) -> Outputs:
    """What a researcher writes in an afternoon: hooks keep each module's first output, one sample."""
    model, adapter = loaded.model, loaded.adapter
    blocks = adapter.blocks(model)
    modules = {"vision": adapter.vision_module(model), **{str(k): blocks[k] for k in extractor.layers}}
    parts = []
    for image, question in zip(images, questions, strict=True):
        inputs = extractor.prepare([image], [question]).to(loaded.device)
        kept: dict[str, Any] = {}
        handles = [module.register_forward_hook(keep_first(kept, name)) for name, module in modules.items()]
        try:
            sequences = model.generate(**inputs, max_new_tokens=extractor.max_new_tokens, do_sample=False)
        finally:
            for handle in handles:
                handle.remove()
        layers = [kept[str(k)] for k in extractor.layers]
        values = at_positions(loaded, extractor, inputs, kept["vision"], layers)
        parts.append(values | {"answers": answers(loaded, sequences, inputs["input_ids"].shape[1])})
    return joined(parts)


def nnsight_model(loaded: LoadedModel):
    from nnsight.modeling.transformers import TransformersModel

    return TransformersModel(loaded.model, task="image-text-to-text", processor=loaded.processor)


def envoy(wrapped, module: nn.Module, names: dict[nn.Module, str]):
    """nnsight's handle on a module of the model, by the module's dotted name."""
    handle = wrapped
    for part in names[module].split("."):
        handle = handle[int(part)] if part.isdigit() else getattr(handle, part)
    return handle


def nnsight_trace(
    loaded: LoadedModel, extractor: Extractor, images, questions, batch: int, wrapped=None
) -> Outputs:
    """nnsight's way: trace `generate`; a module's `.output` in the block is its first call (the prefill),
    read in the order the model runs them."""
    wrapped = wrapped or nnsight_model(loaded)
    model, adapter = loaded.model, loaded.adapter
    names = {module: name for name, module in model.named_modules()}
    blocks = adapter.blocks(model)
    parts = []
    for rows in batches(len(images), batch):
        inputs = extractor.prepare(images[rows], questions[rows]).to(loaded.device)
        saved: dict[str, Any] = {}
        with wrapped.generate(
            dict(inputs), max_new_tokens=extractor.max_new_tokens, do_sample=False
        ) as tracer:
            saved["vision"] = envoy(wrapped, adapter.vision_module(model), names).output.save()
            for k in extractor.layers:
                saved[str(k)] = envoy(wrapped, blocks[k], names).output.save()
            saved["sequences"] = tracer.result.save()
        layers = [saved[str(k)] for k in extractor.layers]
        values = at_positions(loaded, extractor, inputs, saved["vision"], layers)
        parts.append(values | {"answers": answers(loaded, saved["sequences"], inputs["input_ids"].shape[1])})
    return joined(parts)


def disagreement(reference: Outputs, other: Outputs) -> str:
    """ "" when `other` holds halp's representations (within TOLERANCE) and answers, else what differs."""
    problems = []
    for name in REPRESENTATIONS:
        gap = float(np.abs(reference[name] - other[name]).max())
        scale = float(np.abs(reference[name]).max()) or 1.0
        if gap > TOLERANCE * max(1.0, scale):
            problems.append(f"{name} differs by up to {gap:.2e}")
    if differing := sum(a != b for a, b in zip(reference["answers"], other["answers"], strict=True)):
        problems.append(f"{differing} answers differ")
    return "; ".join(problems)


class Peak:
    """How far memory rises above where it stood during one call: allocated memory on a GPU; on a CPU the
    resident set, its high-water mark reset through /proc/self/clear_refs (Linux) before the call."""

    def __init__(self, device: torch.device):
        self.device = device
        self.start = 0.0

    def reset(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
            self.start = torch.cuda.memory_allocated(self.device) / 2**20
        else:
            Path("/proc/self/clear_refs").write_text("5")
            self.start = self._status("VmRSS")

    def rise_mib(self) -> float:
        if self.device.type == "cuda":
            return torch.cuda.max_memory_allocated(self.device) / 2**20 - self.start
        return self._status("VmHWM") - self.start

    @staticmethod
    def _status(field: str) -> float:
        """A /proc/self/status field, in MiB."""
        line = next(
            line for line in Path("/proc/self/status").read_text().splitlines() if line.startswith(field)
        )
        return int(line.split()[1]) / 2**10


PEERS = {"nnsight": nnsight_trace, "hooks": hooks_script}
ONE_AT_A_TIME = {"hooks"}  # what a researcher's afternoon script does; the others take the batch


def compare(loaded: LoadedModel, extractor: Extractor, images, questions, batch: int, rounds: int) -> dict:
    """Equality first, then `rounds` interleaved rounds: {method: {rate, ratio, its range, memory rise}} and
    the peers that disagree or cannot run, with why. A peer is held to halp run at its own batch size (the
    same numerics, so any difference is a wrong position, layer or pooling, not rounding)."""
    halp_at = {size: halp_engine(loaded, extractor, images, questions, size) for size in {1, batch}}
    calls: dict[str, Callable[[], Outputs]] = {
        "halp": partial(halp_engine, loaded, extractor, images, questions, batch)
    }
    skipped: dict[str, str] = {}
    for name, method in PEERS.items():
        if name == "nnsight" and importlib.util.find_spec("nnsight") is None:
            skipped[name] = "not installed (see this script's docstring)"
            continue
        size = 1 if name in ONE_AT_A_TIME else batch
        try:  # a peer that cannot wrap or run this model is reported, not fatal
            extra = {"wrapped": nnsight_model(loaded)} if name == "nnsight" else {}
            call = partial(method, loaded, extractor, images, questions, size, **extra)
            if problem := disagreement(halp_at[size], call()):
                skipped[name] = f"disagrees with halp: {problem}"
            else:
                calls[name] = call
        except Exception as err:
            skipped[name] = f"fails: {type(err).__name__}: {str(err)[:200]}"
    peak, seconds, rises = Peak(loaded.device), {name: [] for name in calls}, dict.fromkeys(calls, 0.0)
    order = list(calls)
    for round_ in range(rounds):
        for name in order[round_ % len(order) :] + order[: round_ % len(order)]:
            peak.reset()
            seconds[name].append(timed(loaded.device, calls[name]))
            rises[name] = max(rises[name], peak.rise_mib())
    results = {}
    for name in calls:
        ratios = [s / h for h, s in zip(seconds["halp"], seconds[name], strict=True)]  # halp's rate / theirs
        results[name] = {
            "samples_per_s": len(images) / statistics.median(seconds[name]),
            "halp_ratio": statistics.median(ratios),
            "halp_ratio_range": (min(ratios), max(ratios)),
            "memory_rise_mib": rises[name],
        }
    return {"results": results, "skipped": skipped}


def report(title: str, compared: dict) -> None:
    print(title)
    for name, r in compared["results"].items():
        low, high = r["halp_ratio_range"]
        ratio = "" if name == "halp" else f"   halp {r['halp_ratio']:.2f}x its rate ({low:.2f}-{high:.2f})"
        memory = f"memory +{r['memory_rise_mib']:.0f} MiB"
        print(f"  {name:8s} {r['samples_per_s']:8.2f} samples/s   {memory:>17s}{ratio}")
    for name, why in compared["skipped"].items():
        print(f"  {name:8s} not timed: {why}")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", action="append", help="a key of params.yaml's models (repeatable)")
    parser.add_argument("--n", type=int, default=32, help="samples, the sample's first")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    args = parser.parse_args()
    params = load_params(args.params)
    samples = read_samples(params.data.out).head(args.n)
    images, questions = [load_image(p) for p in samples.image_path], list(samples.question)
    for name in args.model or ["demo_vlm", "demo_mllama"]:
        settings = params.model(name)
        loaded = load_model(settings)
        extractor = Extractor.configured(loaded, settings, params.extract.top_k)
        compared = compare(loaded, extractor, images, questions, settings.batch_size, args.rounds)
        report(
            f"{name} ({loaded.model_type}) on {loaded.device} ({cpu_name()}): {len(images)} samples, layers "
            f"{extractor.layers}, {extractor.max_new_tokens} new tokens, halp and nnsight in batches of "
            f"{settings.batch_size}, hooks one at a time, {args.rounds} rounds",
            compared,
        )


if __name__ == "__main__":
    main()
