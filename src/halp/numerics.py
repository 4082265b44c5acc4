"""The same numbers on every x86-64 CPU: PyTorch's CPU kernels, MKL and oneDNN pick their code path by
the instructions a CPU offers, and an AVX-512 path sums in another order than an AVX2 one, so the demo
VLM trained on one machine differed from another's from its 100th step. Capping all three at AVX2, a
level every x86-64 CPU of the last decade has, makes a run's numbers the machine's no longer.

It works only before torch loads: `halp`'s command line applies it first thing. A variable already set
wins, so `ATEN_CPU_CAPABILITY=avx512 halp ...` trades portability for speed deliberately.
"""

from __future__ import annotations

import os
import sys
import warnings

PORTABLE = {
    "ATEN_CPU_CAPABILITY": "avx2",  # PyTorch's vectorised CPU kernels
    "MKL_CBWR": "AVX2,STRICT",  # MKL's conditional numerical reproducibility (BLAS)
    "ONEDNN_MAX_CPU_ISA": "AVX2",  # oneDNN (convolutions)
}


def use_portable_numerics() -> None:
    if "torch" in sys.modules:
        warnings.warn(
            "torch was imported before halp set its portable CPU numerics: results may depend on the CPU",
            stacklevel=2,
        )
    for name, value in PORTABLE.items():
        os.environ.setdefault(name, value)
