"""Data-parallel extraction: two CPU workers (gloo) give what one process gives, and resume after a kill."""

from __future__ import annotations

import h5py
import numpy as np
import pandas as pd
import pytest

from halp.store import open_embeddings
from tests.conftest import halp, kill_after_first_part, set_params

pytestmark = pytest.mark.slow
MODEL = "qwen2_vl"


def assert_same_extraction(folder, reference) -> None:
    ours, theirs = open_embeddings(folder), open_embeddings(reference)
    pd.testing.assert_frame_equal(ours.meta, theirs.meta)  # same order, answers and positions
    for rep in ("vision_token", "query_token"):
        for layer in theirs.layers:
            np.testing.assert_allclose(ours.get(rep, layer), theirs.get(rep, layer), atol=1e-4, rtol=0)
    np.testing.assert_allclose(ours.get("vision_only"), theirs.get("vision_only"), atol=1e-4, rtol=0)


@pytest.fixture()
def reference(workspace):
    set_params(workspace, {"extract.out_dir": "single"})
    halp("extract", "--model", MODEL, cwd=workspace)
    set_params(
        workspace, {"extract.out_dir": "parallel", "extract.launcher": "torchrun", "extract.processes": 2}
    )
    return workspace / "single" / MODEL


@pytest.mark.parametrize("launcher", ["torchrun", "accelerate"])
def test_two_workers_equal_one_process(workspace, reference, launcher):
    set_params(workspace, {"extract.launcher": launcher})
    result = halp("extract", "--model", MODEL, cwd=workspace)
    assert "launching 2 workers" in result.stderr
    folder = workspace / "parallel" / MODEL
    ranks = set()
    for part in folder.glob("part-*.h5"):
        with h5py.File(part) as f:
            assert f.attrs["world_size"] == 2
            ranks.add(int(f.attrs["rank"]))
    assert ranks == {0, 1}
    assert_same_extraction(folder, reference)


def test_killed_workers_resume_without_duplicates(workspace, reference):
    set_params(workspace, {f"models.{MODEL}.max_new_tokens": 24})
    folder = workspace / "parallel" / MODEL
    kill_after_first_part(MODEL, folder, workspace)

    halp("extract", "--model", MODEL, cwd=workspace)
    emb = open_embeddings(folder)
    assert not emb.meta.sample_id.duplicated().any()
    set_params(workspace, {f"models.{MODEL}.max_new_tokens": 6})  # the reference's, for the comparison below
    assert len(emb.meta) == len(open_embeddings(reference).meta)
