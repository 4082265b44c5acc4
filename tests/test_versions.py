"""Stored numbers move only with a version bump (`halp.versions`): a small run of each versioned stage on
a tiny model, against the numbers committed in tests/versions/reference.json.

After a deliberate change of what a stage stores, bump its version in src/halp/versions.py and rewrite
the reference: `HALP_WRITE_REFERENCE=1 pytest tests/test_versions.py`. The tolerance covers float
rounding between CPUs (the tiny models' stored numbers differ there from the 7th digit on); a change of
what is computed (another position, layer meaning or prompt) moves them far more.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from halp import versions
from halp.config import load_params
from halp.data.corpus import write_demo_corpus
from halp.extract.run import extract
from halp.lens.bank import build_bank
from halp.lens.lens_run import lens
from halp.lens.run import vision_tokens
from halp.store import open_bank, open_embeddings, open_lens, open_vision_tokens
from halp.store.parts import IMAGE_ATTENTION
from tests.conftest import make_workspace, set_params

REFERENCE = Path(__file__).parent / "versions" / "reference.json"
MODEL = "qwen2_vl"
RTOL, ATOL = 1e-4, 1e-6


def _summary(values: np.ndarray) -> list[float]:
    """Enough of an array to see it move: mean, std, max |value| and its first and last entries (of the
    finite ones: a statistic with no previous layer is NaN at the LM's input)."""
    flat = np.asarray(values, dtype=np.float64).ravel()
    flat = flat[np.isfinite(flat)]
    return [flat.mean(), flat.std(), np.abs(flat).max(), flat[0], flat[-1]]


def _extraction(params) -> dict:
    emb = open_embeddings(params.extract.out_dir / MODEL)
    numbers = {"vision_only": _summary(emb.get("vision_only"))}
    for rep in ("vision_token", "query_token"):
        numbers |= {f"{rep}/{layer}": _summary(emb.get(rep, layer)) for layer in emb.layers}
    numbers["first_token_logprobs"] = _summary(emb.get("first_token_logprobs"))
    meta = emb.meta
    exact = {
        "answers": meta.answer.tolist(),
        "positions": meta[["vision_token_pos", "query_token_pos", "seq_len"]].to_numpy().tolist(),
    }
    return {"numbers": numbers, "exact": exact}


def _image_attention(params) -> dict:
    emb = open_embeddings(params.extract.out_dir / MODEL)
    numbers = {
        f"{name}/{layer}": _summary(emb.get(name, layer)) for name in IMAGE_ATTENTION for layer in emb.layers
    }
    return {"numbers": numbers, "exact": {}}


def _vision_tokens(params) -> dict:
    table = open_vision_tokens(params.lens.out_dir / MODEL).statistics()
    stats = table.drop(columns=["image_id", "layer"]).astype(np.float64)
    return {"numbers": {name: _summary(stats[name]) for name in stats}, "exact": {}}


def _bank(params) -> dict:
    bank = open_bank(params.lens.bank_dir / MODEL)
    numbers = {f"vectors/{layer}": _summary(bank.vectors(layer)) for layer in bank.layers}
    numbers |= {f"norms/{layer}": _summary(bank.norms(layer)) for layer in bank.layers}
    return {"numbers": numbers, "exact": {"rows": len(bank.meta)}}


def _lens(params) -> dict:
    readings = open_lens(params.lens.lens_dir / MODEL)
    names = ("latent_scores", "embedding_scores", "logit_scores")
    numbers = {name: _summary(np.concatenate(readings.per_image(name))) for name in names}
    return {"numbers": numbers, "exact": {}}


@pytest.fixture(scope="module")
def observed(tmp_path_factory, tiny_dir) -> dict:
    """Each versioned stage once on tiny Qwen2-VL: 6 samples, their images, a 24-sentence corpus; the
    extraction with image attention on."""
    folder = make_workspace(tmp_path_factory.mktemp("versions"), tiny_dir, sample_size=6)
    corpus = write_demo_corpus(folder / "corpus.txt", n_sentences=24, seed=0)
    set_params(folder, {"lens": {"corpus": str(corpus), "max_per_token": 4, "layers": [0, -1]}})
    set_params(folder, {f"models.{MODEL}.image_attention": True})  # stores the same VF, VT, QT as without
    before = Path.cwd()
    os.chdir(folder)
    try:
        params = load_params(Path("params.yaml"))
        extract(params, MODEL)
        vision_tokens(params, MODEL)
        build_bank(params, MODEL)
        lens(params, MODEL)
        return {
            "EXTRACTION": _extraction(params),
            "IMAGE_ATTENTION": _image_attention(params),
            "VISION_TOKENS": _vision_tokens(params),
            "BANK": _bank(params),
            "LENS": _lens(params),
        }
    finally:
        os.chdir(before)


@pytest.fixture(scope="module")
def reference(observed) -> dict:
    if os.environ.get("HALP_WRITE_REFERENCE"):
        written = {name: {"version": getattr(versions, name)} | got for name, got in observed.items()}
        REFERENCE.write_text(json.dumps(written, indent=1) + "\n")
    return json.loads(REFERENCE.read_text())


@pytest.mark.parametrize("stage", ["EXTRACTION", "IMAGE_ATTENTION", "VISION_TOKENS", "BANK", "LENS"])
def test_stored_numbers_move_only_with_a_version_bump(stage, observed, reference):
    expected, got, version = reference[stage], observed[stage], getattr(versions, stage)
    rewrite = "rewrite tests/versions/reference.json: HALP_WRITE_REFERENCE=1 pytest tests/test_versions.py"
    assert expected["version"] == version, f"halp.versions.{stage} is {version}: {rewrite}"
    moved = [
        name
        for name, values in expected["numbers"].items()
        if not np.allclose(got["numbers"].get(name, np.nan), values, rtol=RTOL, atol=ATOL)
    ]
    moved += [name for name, values in expected["exact"].items() if got["exact"].get(name) != values]
    assert set(got["numbers"]) == set(expected["numbers"]) and not moved, (
        f"{stage}'s stored numbers moved ({', '.join(moved) or 'other keys'}) while halp.versions.{stage} "
        f"stayed {version}: if the change is meant, bump it in src/halp/versions.py and {rewrite}"
    )
