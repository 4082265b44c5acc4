"""Which CPU library computes each operation of a demo-VLM training step, and which setting changes its bytes.

halp caps PyTorch's own kernels, MKL and oneDNN at AVX2 (`halp.numerics`), yet the demo VLM trained on an
AMD EPYC and on an Intel Xeon came out different. A cap fixes an instruction set, not a code path: MKL
documents its AVX2 reproducibility branch for Intel CPUs only (elsewhere it runs its AUTO branch), oneDNN
chooses its kernels at run time from the CPU it finds, PyTorch's reductions split work by thread count.
This script runs the operations one training step uses, in float32 at the demo VLM's real shapes (its
real initial weights, a real 48-question batch), once per environment setting, each in its own
subprocess (the variables must be set before torch loads), and prints

* a table of whether each operation's output and gradient bytes equal those under halp's caps, and
* which library each operation reached, from oneDNN's and MKL's own verbose logs and the aten kernels
  torch's profiler saw (traced settings only; MKL's vector math, which ATen uses for sqrt, exp, log,
  tanh and erf, is not in MKL's log and shows only in the bytes).

    python tools/cpu_paths.py                 # every setting: 3-5 minutes on a busy 2-core machine
    python tools/cpu_paths.py --only "1 thread" "no mkldnn"

A cell reads `=` (output and gradient equal the baseline's), `F` (output differs), `G` (gradient or, for
the optimiser and the whole step, the parameters after the step differ) or `FG`.
"""

from __future__ import annotations

import argparse
import collections
import ctypes
import hashlib
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from halp.numerics import PORTABLE  # imports no torch

NO_MKLDNN = "CPU_PATHS_NO_MKLDNN"  # the worker sets torch.backends.mkldnn.enabled = False
TRACE = "CPU_PATHS_TRACE"  # the worker logs oneDNN and MKL calls and profiles each operation
RESULT = "CPU_PATHS_RESULT "
MARK = "CPU_PATHS_OP "
# every variable a setting may change: inherited values are dropped so that only the setting's count
CONTROLLED = {
    *PORTABLE,
    "MKL_ENABLE_INSTRUCTIONS",
    "OMP_NUM_THREADS",
    "MKL_NUM_THREADS",
    "ONEDNN_VERBOSE",
    "DNNL_VERBOSE",
    "MKL_VERBOSE",
    NO_MKLDNN,
    TRACE,
}
PORTABLEST = {NO_MKLDNN: "1", "MKL_CBWR": "COMPATIBLE", "ATEN_CPU_CAPABILITY": "default"}
SETTINGS: dict[str, dict[str, str]] = {
    "baseline": {},
    "baseline, traced": {TRACE: "1"},
    "oneDNN AVX512_CORE": {"ONEDNN_MAX_CPU_ISA": "AVX512_CORE"},
    "oneDNN SSE41": {"ONEDNN_MAX_CPU_ISA": "SSE41"},
    "MKL_CBWR AVX512": {"MKL_CBWR": "AVX512"},
    "MKL_CBWR COMPATIBLE": {"MKL_CBWR": "COMPATIBLE"},
    "MKL_CBWR AUTO": {"MKL_CBWR": "AUTO"},
    "MKL_ENABLE_INSTRUCTIONS AVX2": {"MKL_ENABLE_INSTRUCTIONS": "AVX2"},
    "ATen default": {"ATEN_CPU_CAPABILITY": "default"},
    "ATen avx512": {"ATEN_CPU_CAPABILITY": "avx512"},
    "1 thread": {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"},
    "no mkldnn": {NO_MKLDNN: "1"},
    "no mkldnn + CBWR COMPATIBLE + ATen default": PORTABLEST,
    "the same, traced": PORTABLEST | {TRACE: "1"},
}
# ATen's at::vml sends these float functions to MKL's vector math (vms*, VML_HA; torch/include/ATen/cpu/
# vml.h), which MKL_VERBOSE does not log: their MKL dependence shows only in the bytes
VML = ("sqrt", "exp, log", "clip_grad_norm_ + AdamW")
BATCH_QUESTIONS = 48  # the organisms' batch_size
# aten kernels worth naming in the dispatch table (the rest are PyTorch's own vectorised loops)
KERNELS = re.compile(
    r"^aten::(mkldnn|_?conv|slow_conv|.*mm$|_scaled_dot|_foreach|_fused|native_layer_norm$|_softmax$|_log_softmax$|nll_loss_forward|embedding_dense|.*gelu|.*silu)"
)


# ---------------------------------------------------------------------------------------------- worker


def _prepare(folder: Path) -> None:
    """The demo VLM's initial weights and one 48-question batch of the full curriculum, under halp's caps."""
    import numpy as np
    import torch

    from halp.config import TrainingRecipe
    from halp.models.registry import adapter_for
    from halp.models.synthetic import instantiate
    from halp.organism.train import KINDS, Collator, TrainingSet, stop_ids

    recipe = TrainingRecipe(n_images=64, seed=0)
    torch.manual_seed(recipe.seed)
    model, processor = instantiate("qwen2_vl", "demo")
    model.save_pretrained(folder / "model")
    data = TrainingSet(Collator(processor, adapter_for("qwen2_vl", "demo_vlm"), stop_ids(model)), recipe)
    rng = np.random.default_rng(recipe.seed)
    batch = dict(data.batch(data.draw_images(set(KINDS), BATCH_QUESTIONS, rng), set(KINDS), rng))
    torch.save(batch, folder / "batch.pt")


def _digest(tensors: list[Any]) -> str:
    h = hashlib.sha256()
    for t in tensors:
        h.update(t.detach().contiguous().cpu().numpy().tobytes())
    return h.hexdigest()[:12]


def _flush_c_stdout() -> None:
    """oneDNN and MKL print through C's buffered stdout: flush it so their lines stay between our marks."""
    ctypes.CDLL(None).fflush(None)


def _operations(folder: Path) -> dict[str, Callable[[], tuple[list[Any], list[Any]]]]:
    """Each operation at its real shape: a function returning (outputs, gradients or state)."""
    import numpy as np
    import torch
    import torch.nn.functional as F
    from transformers import Qwen2VLForConditionalGeneration

    model = Qwen2VLForConditionalGeneration.from_pretrained(folder / "model", attn_implementation="sdpa")
    model.float().train()
    batch = torch.load(folder / "batch.pt")
    visual, text = model.model.visual, model.model.language_model
    n_patches = batch["pixel_values"].shape[0]
    rows, length = batch["input_ids"].shape
    image_lengths = (batch["image_grid_thw"].prod(-1)).tolist()  # patches per image
    heads, kv_heads = text.config.num_attention_heads, text.config.num_key_value_heads
    head_dim = text.config.hidden_size // heads
    v_heads = visual.config.num_heads
    v_dim = visual.config.embed_dim // v_heads

    def seeded(*shape: int, seed: int) -> torch.Tensor:
        """Fixed inputs from numpy: torch's own normal sampler depends on ATEN_CPU_CAPABILITY."""
        return torch.from_numpy(np.random.default_rng(seed).standard_normal(shape, dtype=np.float32))

    def module_op(module: torch.nn.Module, x: torch.Tensor, seed: int) -> tuple[list[Any], list[Any]]:
        module.zero_grad(set_to_none=True)
        x = x.clone().requires_grad_(x.is_floating_point())
        y = module(x)
        y.backward(seeded(*y.shape, seed=seed + 1))
        grads = [p.grad for p in module.parameters() if p.grad is not None]
        return [y], ([x.grad] if x.grad is not None else []) + grads

    def function_op(
        fn: Callable[..., torch.Tensor], *xs: torch.Tensor, seed: int
    ) -> tuple[list[Any], list[Any]]:
        xs = tuple(x.clone().requires_grad_() for x in xs)
        y = fn(*xs)
        y.backward(seeded(*y.shape, seed=seed + 1))
        return [y], [x.grad for x in xs]

    def patch_embed() -> tuple[list[Any], list[Any]]:  # pixels need no gradient in training: weights only
        visual.patch_embed.zero_grad(set_to_none=True)
        y = visual.patch_embed(batch["pixel_values"])
        y.backward(seeded(*y.shape, seed=2))
        return [y], [visual.patch_embed.proj.weight.grad]

    causal = torch.ones(length, length, dtype=torch.bool).tril()
    text_mask = causal & batch["attention_mask"].bool()[:, None, None, :]

    def text_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        k, v = (t.repeat_interleave(heads // kv_heads, dim=1) for t in (k, v))
        return F.scaled_dot_product_attention(q, k, v, attn_mask=text_mask)

    def vision_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        splits = [t.split(image_lengths, dim=2) for t in (q, k, v)]
        return torch.cat([F.scaled_dot_product_attention(*qkv) for qkv in zip(*splits, strict=True)], dim=2)

    labels = batch["labels"][:, 1:].reshape(-1)

    def adamw() -> tuple[list[Any], list[Any]]:
        params = [p.detach().clone().requires_grad_() for p in model.parameters()]
        optimiser = torch.optim.AdamW(params, lr=7e-4, betas=(0.9, 0.98), weight_decay=0.01)
        norms = []
        for step in range(3):
            for n, p in enumerate(params):
                p.grad = seeded(*p.shape, seed=1000 * step + n) * 1e-2
            norms.append(torch.nn.utils.clip_grad_norm_(params, 1.0))
            optimiser.step()
        return params, norms + [optimiser.state[p]["exp_avg_sq"] for p in params]

    def whole_step() -> tuple[list[Any], list[Any]]:
        trained = Qwen2VLForConditionalGeneration.from_pretrained(
            folder / "model", attn_implementation="sdpa"
        )
        trained.float().train()
        optimiser = torch.optim.AdamW(trained.parameters(), lr=7e-4, betas=(0.9, 0.98), weight_decay=0.01)
        loss = trained(**batch).loss
        loss.backward()
        grads = [p.grad.clone() for p in trained.parameters()]
        torch.nn.utils.clip_grad_norm_(trained.parameters(), 1.0)
        optimiser.step()
        return [loss], grads + list(trained.parameters())

    block = text.layers[0]
    return {
        f"Conv3d patch embedding [{n_patches}x1176 -> 64]": patch_embed,
        f"Linear vision qkv 64->192 [{n_patches}]": lambda: module_op(
            visual.blocks[0].attn.qkv, seeded(n_patches, 64, seed=3), 3
        ),
        f"Linear text gate_proj 128->384 [{rows}x{length}]": lambda: module_op(
            block.mlp.gate_proj, seeded(rows, length, 128, seed=4), 4
        ),
        f"Linear lm_head 128->438 [{rows}x{length}]": lambda: module_op(
            model.lm_head, seeded(rows, length, 128, seed=5), 5
        ),
        f"Embedding 438x128 [{rows}x{length}]": lambda: module_op(text.embed_tokens, batch["input_ids"], 6),
        f"LayerNorm(64) [{n_patches}]": lambda: module_op(
            visual.blocks[0].norm1, seeded(n_patches, 64, seed=7), 7
        ),
        f"RMSNorm(128) [{rows}x{length}]": lambda: module_op(
            block.input_layernorm, seeded(rows, length, 128, seed=8), 8
        ),
        f"SDPA text causal+padding [{rows},{heads},{length},{head_dim}]": lambda: function_op(
            text_attention,
            seeded(rows, heads, length, head_dim, seed=9),
            seeded(rows, kv_heads, length, head_dim, seed=10),
            seeded(rows, kv_heads, length, head_dim, seed=11),
            seed=9,
        ),
        f"SDPA vision per image [1,{v_heads},{n_patches},{v_dim}]": lambda: function_op(
            vision_attention, *(seeded(1, v_heads, n_patches, v_dim, seed=12 + i) for i in range(3)), seed=12
        ),
        f"softmax [{rows},{heads},{length},{length}]": lambda: function_op(
            lambda x: x.softmax(-1), seeded(rows, heads, length, length, seed=15), seed=15
        ),
        f"GELU (merger) [{n_patches // 4}x256]": lambda: function_op(
            F.gelu, seeded(n_patches // 4, 256, seed=16), seed=16
        ),
        f"QuickGELU (vision MLP) [{n_patches}x128]": lambda: module_op(
            visual.blocks[0].mlp.act, seeded(n_patches, 128, seed=17), 17
        ),
        f"SiLU (text MLP) [{rows}x{length}x384]": lambda: function_op(
            F.silu, seeded(rows, length, 384, seed=18), seed=18
        ),
        f"cross-entropy [{rows * (length - 1)}x438, real labels]": lambda: function_op(
            lambda x: F.cross_entropy(x, labels, ignore_index=-100),
            seeded(rows * (length - 1), 438, seed=19),
            seed=19,
        ),
        "sqrt, every parameter's shape (AdamW's denominator)": lambda: (
            torch._foreach_sqrt([seeded(*p.shape, seed=20).abs() for p in model.parameters()]),
            [],
        ),
        f"cos, sin (rotary tables) [3x{rows}x{length}x{head_dim}]": lambda: function_op(
            lambda x: torch.cat([x.cos(), x.sin()]), seeded(3, rows, length, head_dim, seed=21) * 50, seed=21
        ),
        f"exp, log, tanh, erf (a probe: not in the step) [{rows}x{length}x384]": lambda: function_op(
            lambda x: torch.stack([x.exp(), x.abs().log(), x.tanh(), x.erf()]),
            seeded(rows, length, 384, seed=22),
            seed=22,
        ),
        "clip_grad_norm_ + AdamW, 3 steps (all params)": adamw,
        f"whole model: loss, grads, clip + AdamW ({BATCH_QUESTIONS} questions)": whole_step,
    }


def _worker(folder: Path) -> None:
    import torch

    if os.environ.get(NO_MKLDNN):
        torch.backends.mkldnn.enabled = False
    trace = bool(os.environ.get(TRACE))
    torch.manual_seed(0)
    operations = _operations(folder)
    result: dict[str, Any] = {
        "capability": torch.backends.cpu.get_cpu_capability(),
        "threads": torch.get_num_threads(),
        "ops": {},
    }
    for name, op in operations.items():
        kernels: list[str] = []
        if trace:
            _flush_c_stdout()
            sys.stdout.write(MARK + name + "\n")
            sys.stdout.flush()
            with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
                outputs, grads = op()
            kernels = sorted({e.key for e in prof.key_averages() if KERNELS.search(e.key)})
            _flush_c_stdout()
        else:
            started = time.perf_counter()
            outputs, grads = op()
            result.setdefault("seconds", {})[name] = round(time.perf_counter() - started, 3)
        result["ops"][name] = {"out": _digest(outputs), "grad": _digest(grads), "kernels": kernels}
    sys.stdout.flush()
    print(RESULT + json.dumps(result), flush=True)


# ---------------------------------------------------------------------------------------------- parent


def _environment(change: dict[str, str]) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in CONTROLLED}
    env |= PORTABLE | change | {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_VERBOSITY": "error"}
    if change.get(TRACE):
        env |= {"ONEDNN_VERBOSE": "1", "MKL_VERBOSE": "1"}
    return env


def _library_calls(log: str) -> tuple[dict[str, collections.Counter[str]], list[str]]:
    """Per operation, oneDNN primitives (kind, implementation) and MKL functions (name, CNR branch); and
    the libraries' own lines on the instruction set they chose."""
    calls: dict[str, collections.Counter[str]] = {}
    info = []
    current = None
    for line in log.splitlines():
        words = line.split()
        if line.startswith(MARK):
            current = calls.setdefault(line[len(MARK) :], collections.Counter())
        elif ",info,cpu," in line or (words[:1] == ["MKL_VERBOSE"] and "(" not in words[1]):
            info.append(line)
        elif current is None:
            continue
        elif line.startswith("onednn_verbose") and ",exec,cpu," in line:
            kind, impl = line.split(",exec,cpu,", 1)[1].split(",")[:2]
            current[f"oneDNN {kind} {impl}"] += 1
        elif line.startswith("MKL_VERBOSE") and len(words) > 1:
            branch = re.search(r"CNR:(\S+)", line)
            current[f"MKL {words[1].split('(')[0]} CNR:{branch.group(1) if branch else 'OFF'}"] += 1
    return calls, info


def _run(script: Path, mode: str, folder: Path, change: dict[str, str]) -> tuple[str, float]:
    started = time.perf_counter()
    done = subprocess.run(
        [sys.executable, str(script), mode, str(folder)],
        env=_environment(change),
        capture_output=True,
        text=True,
    )
    if done.returncode:
        sys.exit(f"{mode} failed ({change}):\n{done.stderr[-3000:]}")
    return done.stdout, time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", nargs="+", choices=list(SETTINGS), help="these settings (and the baseline)")
    args = parser.parse_args()
    script = Path(__file__).resolve()
    names = ["baseline", *[n for n in SETTINGS if n != "baseline" and (not args.only or n in args.only)]]
    with tempfile.TemporaryDirectory(prefix="cpu_paths_") as tmp:
        folder = Path(tmp)
        _, seconds = _run(script, "--prepare", folder, {})
        print(f"prepared the model and batch in {seconds:.0f} s", file=sys.stderr)
        results: dict[str, dict[str, Any]] = {}
        calls: dict[str, tuple[dict[str, collections.Counter[str]], list[str]]] = {}
        for name in names:
            log, seconds = _run(script, "--worker", folder, SETTINGS[name])
            results[name] = json.loads(log.rsplit(RESULT, 1)[1])
            if SETTINGS[name].get(TRACE):
                calls[name] = _library_calls(log)
            print(f"{name}: {seconds:.0f} s", file=sys.stderr)
    base = results["baseline"]
    ops = list(base["ops"])
    columns = names[1:]
    print("| operation (fp32, real shapes) | " + " | ".join(columns) + " |")
    print("|---|" + "---|" * len(columns))
    for op in ops:
        cells = []
        for name in columns:
            mine, theirs = results[name]["ops"][op], base["ops"][op]
            cell = ("F" if mine["out"] != theirs["out"] else "") + (
                "G" if mine["grad"] != theirs["grad"] else ""
            )
            cells.append(cell or "=")
        print(f"| {op} | " + " | ".join(cells) + " |")
    print(
        "| (ATen capability, threads) | "
        + " | ".join(f"{results[n]['capability']}, {results[n]['threads']}" for n in columns)
        + " |"
    )
    print(
        "| (seconds: whole step, all operations; untraced only) | "
        + " | ".join(
            f"{list(results[n]['seconds'].values())[-1]:.1f}, {sum(results[n]['seconds'].values()):.1f}"
            if "seconds" in results[n]
            else ""
            for n in columns
        )
        + " |"
    )
    step, total = list(base["seconds"].values())[-1], sum(base["seconds"].values())
    print(f"\nbaseline: the whole step {step:.1f} s, all operations {total:.1f} s")
    for name, (per_op, info) in calls.items():
        print(f"\n### dispatch under '{name}' (oneDNN / MKL verbose calls; aten kernels from the profiler)\n")
        print("\n".join(f"    {line}" for line in info) + "\n")
        print("| operation | oneDNN and MKL calls | aten kernels |")
        print("|---|---|---|")
        for op in ops:
            library = ", ".join(f"{k} x{n}" for k, n in sorted(per_op.get(op, {}).items())) or "none logged"
            if op.startswith(VML):
                library += " (+ MKL VML, unlogged)"
            print(f"| {op} | {library} | {', '.join(results[name]['ops'][op]['kernels'])} |")


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] in ("--prepare", "--worker"):
        (_prepare if sys.argv[1] == "--prepare" else _worker)(Path(sys.argv[2]))
    else:
        main()
