"""The same numbers whatever vector instructions an Intel CPU offers: PyTorch's CPU kernels, MKL and oneDNN
pick their code path by the instructions a CPU has, and an AVX-512 path sums in another order than an AVX2
one. Capping all three at AVX2, a level every x86-64 CPU of the last decade has, makes a run on an
AVX-512 Intel CPU compute as an AVX2 one.

What it does not do (docs/reproducibility.md): make an AMD CPU compute as an Intel one (MKL documents
its AVX2 branch for Intel CPUs; elsewhere it runs its AUTO branch), or fix the thread count, by which
PyTorch splits some reductions. The trained organisms are shipped for that reason, not rebuilt.

It works only before torch loads: `halp`'s command line applies it first thing. A variable already set
wins, so `ATEN_CPU_CAPABILITY=avx512 halp ...` trades this for speed deliberately.
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
