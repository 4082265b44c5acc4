"""`halp extract` as a user runs it: resume after a kill, stale parts, faulty samples, bad settings."""

from __future__ import annotations

import resource
import shutil
import signal
import subprocess
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pytest
from PIL import Image
from safetensors.torch import load_file, save_file
from transformers import AutoTokenizer

from halp.store import open_embeddings
from halp.store.parts import read_text
from tests.conftest import (
    extract_eight,
    file_limit,
    halp,
    kill_after_first_part,
    set_params,
    start_extract,
    wait_for_first_part,
)

ARRAYS = ["vision_only", "first_token_logprobs"]


def all_arrays(folder: Path) -> dict[str, np.ndarray]:
    emb = open_embeddings(folder)
    arrays = {name: emb.get(name) for name in ARRAYS}
    for rep in ("vision_token", "query_token"):
        for layer in emb.layers:
            arrays[f"{rep}/{layer}"] = emb.get(rep, layer)
    return arrays


@pytest.mark.slow
def test_killed_run_resumes_to_identical_arrays(workspace):
    model = "qwen2_5_vl"
    set_params(workspace, {f"models.{model}.max_new_tokens": 24})
    halp("extract", "--model", model, cwd=workspace)
    reference = all_arrays(workspace / "embeddings" / model)
    reference_meta = open_embeddings(workspace / "embeddings" / model).meta

    set_params(workspace, {"extract.out_dir": "resumed"})
    folder = workspace / "resumed" / model
    kill_after_first_part(model, folder, workspace)
    parts_after_kill = sorted(p.name for p in folder.glob("part-*.h5"))
    assert 1 <= len(parts_after_kill) < 6, "the kill must land mid-run for this test to mean anything"
    refused = halp("summarize", "--model", model, cwd=workspace, check=False)
    assert refused.returncode == 2 and "its extraction has not finished" in refused.stderr
    allowed = halp("summarize", "--model", model, "--allow-incomplete", cwd=workspace)
    assert "reading it anyway" in allowed.stderr

    result = halp("extract", "--model", model, cwd=workspace)
    assert "already done" in result.stderr
    resumed = open_embeddings(folder)
    assert not resumed.meta.sample_id.duplicated().any()
    pd.testing.assert_frame_equal(resumed.meta, reference_meta)
    for name, values in all_arrays(folder).items():
        np.testing.assert_array_equal(values, reference[name], err_msg=name)
    assert not list(folder.glob("*.tmp"))


def test_changed_layers_remove_stale_parts(workspace):
    model = "qwen2_vl"
    set_params(workspace, {"data.sample_size": 6})
    halp("sample", cwd=workspace)
    halp("extract", "--model", model, cwd=workspace)
    folder = workspace / "embeddings" / model
    assert open_embeddings(folder).layers == [0, 2, 3]

    set_params(workspace, {f"models.{model}.layers": [1]})
    result = halp("extract", "--model", model, cwd=workspace)
    assert "extracted with another configuration" in result.stderr
    emb = open_embeddings(folder)
    assert emb.layers == [1]
    assert len(emb.meta) == 6
    for part in emb.parts:
        with h5py.File(part) as f:
            assert list(f.attrs["layers"]) == [1]


def test_image_attention_is_stored_only_when_on_and_off_again_is_the_old_configuration(workspace):
    """On: a new configuration (the parts re-extracted), every stored number the same as without, plus the
    attention arrays, read per layer as [N, heads]. Off: exactly the configuration it was before."""
    model = "qwen2_vl"
    folder = extract_eight(workspace, model)
    plain = open_embeddings(folder)
    plain_hash, plain_arrays = plain.attrs["config_hash"], all_arrays(folder)
    with pytest.raises(
        KeyError, match=f"image_attention: true in params.yaml and run `halp extract --model {model}"
    ):
        plain.get("image_attention", plain.layers[0])

    set_params(workspace, {f"models.{model}.image_attention": True})
    result = halp("extract", "--model", model, cwd=workspace)
    assert "extracted with another configuration" in result.stderr
    emb = open_embeddings(folder)
    assert emb.attrs["config_hash"] != plain_hash
    for name, values in all_arrays(folder).items():
        np.testing.assert_array_equal(values, plain_arrays[name], err_msg=name)
    heads = 4
    for layer in emb.layers:
        share = emb.get("image_attention", layer)
        assert share.shape == (8, heads) and ((share > 0) & (share < 1)).all()
        assert emb.get("vision_token_image_attention_entropy", layer).shape == (8, heads)

    set_params(workspace, {f"models.{model}.image_attention": False})
    halp("extract", "--model", model, cwd=workspace)
    assert open_embeddings(folder).attrs["config_hash"] == plain_hash


def test_faulty_images_become_error_rows_and_the_run_goes_on(workspace):
    model = "qwen2_vl"
    samples = pd.read_csv(workspace / "sampled/samples.csv", dtype=str, keep_default_na=False).head(6)
    corrupt = workspace / "demo/images/corrupt.png"
    corrupt.write_bytes(b"\x89PNG\r\n\x1a\n this is not an image")
    samples.loc[1, "image_path"] = str(corrupt)
    samples.loc[3, "image_path"] = str(workspace / "demo/images/gone.png")
    samples.to_csv(workspace / "sampled/samples.csv", index=False)

    halp("extract", "--model", model, cwd=workspace)
    emb = open_embeddings(workspace / "embeddings" / model)
    assert list(emb.meta.sample_id) == [samples.question_id[i] for i in (0, 2, 4, 5)]
    errors = emb.errors.set_index("sample_id")
    assert set(errors.index) == {samples.question_id[1], samples.question_id[3]}
    assert "cannot be decoded" in errors.loc[samples.question_id[1], "message"]
    assert "corrupt.png" in errors.loc[samples.question_id[1], "message"]
    assert "image file not found" in errors.loc[samples.question_id[3], "message"]
    assert (errors.stage == "load_image").all() and (errors.kind == "data").all()

    again = halp("extract", "--model", model, cwd=workspace)
    assert "6 already done, 0 earlier failures retried, 0 to extract" in again.stderr

    # A data error stands until its input changes: replaced and restored images are extracted.
    shutil.copy(workspace / samples.image_path[0], corrupt)
    shutil.copy(workspace / samples.image_path[0], workspace / "demo/images/gone.png")
    fixed = halp("extract", "--model", model, cwd=workspace)
    assert "4 already done, 2 earlier failures retried, 2 to extract" in fixed.stderr
    emb = open_embeddings(workspace / "embeddings" / model)
    assert sorted(emb.meta.sample_id) == sorted(samples.question_id) and emb.errors.empty


def test_a_truncated_part_is_named_and_recomputed_with_remove_damaged(workspace):
    model = "qwen2_vl"
    folder = extract_eight(workspace, model)
    reference = all_arrays(folder)
    first, *others = sorted(folder.glob("part-*.h5"))
    assert others, "the test needs a part that stays whole"
    first.write_bytes(first.read_bytes()[:2000])

    refused = halp("extract", "--model", model, cwd=workspace, check=False)
    assert refused.returncode != 0 and "Traceback" not in refused.stderr
    named = f"embeddings/{model}/{first.name}"
    assert f"{named} cannot be read" in refused.stderr and "--remove-damaged" in refused.stderr
    result = halp("extract", "--model", model, "--remove-damaged", cwd=workspace)
    assert f"removing {named} (--remove-damaged)" in result.stderr
    assert "4 already done, 0 earlier failures retried, 4 to extract" in result.stderr
    for name, values in all_arrays(folder).items():
        np.testing.assert_array_equal(values, reference[name], err_msg=name)


def test_an_image_path_that_is_a_folder_or_a_link_loop_is_a_data_error_and_the_run_goes_on(workspace):
    """(Unreadable for lack of permission takes the same path, but root, as tests run here, reads all.)"""
    model = "qwen2_vl"
    samples = pd.read_csv(workspace / "sampled/samples.csv", dtype=str, keep_default_na=False).head(4)
    folder, loop = workspace / "demo/images/folder.png", workspace / "demo/images/loop.png"
    folder.mkdir()
    loop.symlink_to(loop)
    samples.loc[1, "image_path"], samples.loc[2, "image_path"] = str(folder), str(loop)
    samples.to_csv(workspace / "sampled/samples.csv", index=False)

    halp("extract", "--model", model, cwd=workspace)
    emb = open_embeddings(workspace / "embeddings" / model)
    assert list(emb.meta.sample_id) == [samples.question_id[i] for i in (0, 3)]
    errors = emb.errors.set_index("sample_id")
    assert (errors.kind == "data").all() and set(errors.index) == set(samples.question_id[1:3])
    assert "folder.png: a folder, not an image file" in errors.loc[samples.question_id[1], "message"]
    assert "loop.png: a symlink loop" in errors.loc[samples.question_id[2], "message"]


def test_runtime_failures_are_retried_on_the_next_run(workspace):
    """A failure inside the model (here Qwen's processor refusing a 4000x8 image; out of memory alike)
    may be transient, so it is recorded as "runtime" and tried again by the next run."""
    model = "qwen2_vl"
    samples = pd.read_csv(workspace / "sampled/samples.csv", dtype=str, keep_default_na=False).head(3)
    Image.new("RGB", (4000, 8), "white").save(workspace / "demo/images/strip.png")
    samples.loc[1, "image_path"] = str(workspace / "demo/images/strip.png")
    samples.to_csv(workspace / "sampled/samples.csv", index=False)
    halp("extract", "--model", model, cwd=workspace)
    (error,) = open_embeddings(workspace / "embeddings" / model).errors.itertuples()
    assert (error.sample_id, error.stage, error.kind) == (samples.question_id[1], "extract", "runtime")

    again = halp("extract", "--model", model, cwd=workspace)
    assert "2 already done, 1 earlier failures retried, 1 to extract" in again.stderr
    emb = open_embeddings(workspace / "embeddings" / model)
    assert len(emb.errors) == 1 and len(emb.meta) == 2, "the retried failure is reported once"


def test_unknown_model_name_names_the_configured_ones(workspace):
    result = halp("extract", "--model", "llava", cwd=workspace, check=False)
    assert result.returncode == 2
    assert "unknown model name 'llava'" in result.stderr
    assert "qwen2_5_vl, qwen2_vl" in result.stderr


def test_layer_out_of_range_says_the_valid_range(workspace):
    set_params(workspace, {"models.qwen2_vl.layers": [0, 4]})
    result = halp("extract", "--model", "qwen2_vl", cwd=workspace, check=False)
    assert result.returncode == 2
    assert "layer 4 is out of range" in result.stderr
    assert "has 4 decoder blocks: use 0..3, -4..-1, or a fraction in [0, 1]" in result.stderr
    assert "Loading weights" not in result.stderr, "checked against the config, before the weights load"
    assert not list((workspace / "embeddings").glob("*/part-*.h5"))


def test_missing_sample_csv_says_which_stage_to_run(workspace):
    (workspace / "sampled/samples.csv").unlink()
    result = halp("extract", "--model", "qwen2_vl", cwd=workspace, check=False)
    assert result.returncode == 2
    assert "run `halp sample` first" in result.stderr


@pytest.mark.slow
def test_a_disk_full_for_a_moment_loses_nothing_and_duplicates_nothing(workspace):
    model = "qwen2_vl"
    set_params(workspace, {"extract.write_retry_seconds": [5]})
    proc = start_extract(model, workspace, stderr=subprocess.PIPE, text=True, preexec_fn=file_limit(4096))
    for line in proc.stderr:
        if "trying again in 5 s" in line:
            break
    assert "File too large" in line
    resource.prlimit(proc.pid, resource.RLIMIT_FSIZE, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
    _, rest = proc.communicate(timeout=300)
    assert proc.returncode == 0, rest[-3000:]
    emb = open_embeddings(workspace / "embeddings" / model)
    assert len(emb.meta) == 24 and not emb.meta.sample_id.duplicated().any() and emb.errors.empty
    assert not list((workspace / "embeddings" / model).glob("*.tmp"))


@pytest.mark.slow
def test_a_disk_full_for_good_stops_with_one_clear_message_and_resumes(workspace):
    model = "qwen2_vl"
    set_params(workspace, {"extract.write_retry_seconds": [0.1]})
    folder = workspace / "embeddings" / model
    stopped = halp("extract", "--model", model, cwd=workspace, check=False, preexec_fn=file_limit(4096))
    assert stopped.returncode == 2 and "Traceback" not in stopped.stderr
    assert "could not write embeddings/qwen2_vl/part-00000.h5" in stopped.stderr
    assert "4 samples" in stopped.stderr and "File too large" in stopped.stderr
    assert "extraction failed" not in stopped.stderr, "a write error is never a sample's error"
    assert not list(folder.glob("part-*")) and not list(folder.glob("*.tmp"))

    halp("extract", "--model", model, cwd=workspace)
    emb = open_embeddings(folder)
    assert len(emb.meta) == 24 and not emb.meta.sample_id.duplicated().any() and emb.errors.empty


@pytest.mark.slow
def test_ctrl_c_says_what_was_kept_and_the_rerun_goes_on(workspace):
    model = "qwen2_5_vl"
    folder = workspace / "embeddings" / model
    proc = start_extract(model, workspace, stderr=subprocess.PIPE, text=True)
    wait_for_first_part(proc, folder)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    if proc.returncode == 0:
        pytest.skip("the run finished before the interrupt arrived")
    assert proc.returncode == 130 and "Traceback" not in err
    assert "interrupted. Finished work is kept" in err and "run the same command again" in err
    again = halp("extract", "--model", model, cwd=workspace)
    assert "already done" in again.stderr
    assert len(open_embeddings(folder).meta) == 24


def test_a_replaced_image_is_extracted_again_and_only_it(workspace):
    model = "qwen2_vl"
    folder = extract_eight(workspace, model)
    before = open_embeddings(folder)
    old_vf = dict(zip(before.meta.sample_id, before.get("vision_only"), strict=True))
    image = before.meta.image_id[0]
    Image.new("RGB", (64, 64), "purple").save(workspace / "demo/images" / image)

    halp("sample", cwd=workspace)  # what `dvc repro` does first: the sample's image hashes change
    result = halp("extract", "--model", model, cwd=workspace)
    changed = set(before.meta.sample_id[before.meta.image_id == image])
    assert f"{len(changed)} samples' images changed since they were extracted" in result.stderr
    after = open_embeddings(folder)
    assert len(after.meta) == 8 and not after.meta.sample_id.duplicated().any()
    new_vf = dict(zip(after.meta.sample_id, after.get("vision_only"), strict=True))
    for sample_id, values in new_vf.items():
        assert np.array_equal(values, old_vf[sample_id]) != (sample_id in changed), sample_id
    samples = pd.read_csv(workspace / "sampled/samples.csv", dtype=str).set_index("question_id")
    assert (
        after.meta.set_index("sample_id").image_sha256 == samples.image_sha256[after.meta.sample_id]
    ).all()


def test_repaired_ground_truths_are_flagged_in_the_embeddings(workspace):
    samples = pd.read_csv(workspace / "sampled/samples.csv", dtype=str, keep_default_na=False).head(2)
    samples.loc[0, "gt_repaired"] = "True"
    samples.to_csv(workspace / "sampled/samples.csv", index=False)
    halp("extract", "--model", "qwen2_vl", cwd=workspace)
    meta = open_embeddings(workspace / "embeddings/qwen2_vl").meta.set_index("sample_id")
    assert meta.gt_repaired[samples.question_id].tolist() == [True, False]


def test_samples_no_longer_in_the_sample_leave_the_folder(workspace):
    model = "qwen2_vl"
    set_params(workspace, {"data.sample_size": 8, f"models.{model}.checkpoint_interval": 4})
    halp("sample", cwd=workspace)
    halp("extract", "--model", model, cwd=workspace)
    folder = workspace / "embeddings" / model
    before = open_embeddings(folder)
    old = dict(zip(before.meta.sample_id, before.get("vision_only"), strict=True))
    path = workspace / "sampled/samples.csv"
    samples = pd.read_csv(path, dtype=str, keep_default_na=False)
    samples.head(3).to_csv(path, index=False)  # a smaller sample: one part loses all its rows

    result = halp("extract", "--model", model, cwd=workspace)
    assert "5 extracted samples are no longer in the sample" in result.stderr
    kept = set(samples.question_id.head(3))
    for part in folder.glob("part-*.h5"):  # not only hidden by the manifest: gone from the files
        with h5py.File(part, "r") as f:
            assert set(read_text(f["meta/sample_id"])) <= kept, part.name
    after = open_embeddings(folder)
    assert list(after.meta.sample_id) == list(samples.question_id.head(3))
    for sample_id, values in zip(after.meta.sample_id, after.get("vision_only"), strict=True):
        np.testing.assert_array_equal(values, old[sample_id])


def test_max_samples_extracts_the_samples_first_rows_and_grows_without_redoing_them(workspace):
    model = "qwen2_vl"
    set_params(workspace, {"data.sample_size": 8, f"models.{model}.max_samples": 3})
    halp("sample", cwd=workspace)
    halp("extract", "--model", model, cwd=workspace)
    samples = pd.read_csv(workspace / "sampled/samples.csv", dtype=str, keep_default_na=False)
    folder = workspace / "embeddings" / model
    assert list(open_embeddings(folder).meta.sample_id) == list(samples.question_id.head(3))
    set_params(workspace, {f"models.{model}.max_samples": 5})
    result = halp("extract", "--model", model, cwd=workspace)
    assert "5 samples, 3 already done" in result.stderr
    assert list(open_embeddings(folder).meta.sample_id) == list(samples.question_id.head(5))


def test_prefetching_the_next_batch_changes_nothing(workspace):
    """Batches prepared in a background thread give the same rows, arrays and errors, a corrupt image
    and a batch the processor refuses (then retried sample by sample) included."""
    model = "qwen2_vl"
    samples = pd.read_csv(workspace / "sampled/samples.csv", dtype=str, keep_default_na=False).head(7)
    (workspace / "demo/images/corrupt.png").write_bytes(b"not an image")
    Image.new("RGB", (4000, 8), "white").save(workspace / "demo/images/strip.png")
    samples.loc[1, "image_path"] = str(workspace / "demo/images/corrupt.png")
    samples.loc[4, "image_path"] = str(workspace / "demo/images/strip.png")
    samples.to_csv(workspace / "sampled/samples.csv", index=False)
    runs = {}
    for prefetch in (False, True):
        out_dir = f"prefetch_{prefetch}"
        set_params(workspace, {"extract.prefetch": prefetch, "extract.out_dir": out_dir})
        halp("extract", "--model", model, cwd=workspace)
        runs[prefetch] = workspace / out_dir / model
    plain, ahead = (open_embeddings(runs[p]) for p in (False, True))
    pd.testing.assert_frame_equal(plain.meta, ahead.meta)
    errors = ["sample_id", "stage", "kind"]
    pd.testing.assert_frame_equal(plain.errors[errors], ahead.errors[errors])
    assert sorted(plain.errors.sample_id) == sorted(samples.question_id[[1, 4]])
    for name, values in all_arrays(runs[True]).items():
        np.testing.assert_array_equal(values, all_arrays(runs[False])[name], err_msg=name)


def test_the_same_extraction_twice_writes_the_same_bytes(workspace):
    """What DVC hashes: a rerun on an unchanged repository (a fresh clone's `dvc repro`) must give the
    outputs dvc.lock already records, so no part may hold a time, host or other run-specific value."""
    model = "qwen2_vl"
    set_params(workspace, {"data.sample_size": 8})
    halp("sample", cwd=workspace)
    folders = []
    for out_dir in ("first", "second"):
        set_params(workspace, {"extract.out_dir": out_dir})
        halp("extract", "--model", model, cwd=workspace)
        folders.append(workspace / out_dir / model)
    names = sorted(p.name for p in folders[0].iterdir())
    assert len(names) > 2 and names == sorted(p.name for p in folders[1].iterdir())
    for name in names:
        assert (folders[0] / name).read_bytes() == (folders[1] / name).read_bytes(), name


def test_a_model_that_computes_nan_stops_at_the_batch_naming_its_samples_and_keeps_the_earlier_rows(
    workspace, tiny_dir
):
    """NaN in one token's input embedding: the samples whose question holds that token compute NaN states."""
    broken = workspace / "broken"
    shutil.copytree(tiny_dir / "qwen2_vl", broken)
    samples = pd.read_csv(workspace / "sampled/samples.csv", dtype=str, keep_default_na=False)
    tokenizer = AutoTokenizer.from_pretrained(broken)
    ids = [set(tokenizer(question)["input_ids"]) for question in samples.question]
    first = next(i for i in range(2, len(ids)) if ids[i] - ids[0] - ids[1])  # after one clean batch of two
    poisoned = min(ids[first] - ids[0] - ids[1])
    hit = [samples.question_id[i] for i in range(2, len(ids)) if poisoned in ids[i]]
    weights = load_file(broken / "model.safetensors")
    embedding = next(name for name in weights if name.endswith("embed_tokens.weight"))
    weights[embedding][poisoned] = float("nan")
    save_file(weights, broken / "model.safetensors", metadata={"format": "pt"})
    set_params(workspace, {"models.broken": {"model": str(broken), "layers": [0, -1], "batch_size": 2}})

    result = halp("extract", "--model", "broken", cwd=workspace, check=False)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    batch = [q for q in samples.question_id[2 * (first // 2) : 2 * (first // 2) + 2] if q in hit]
    assert f"the model computed states that are not finite (NaN or inf) for {len(batch)} sample(s): " in (
        result.stderr
    )
    assert ", ".join(sorted(batch)) in result.stderr and "set dtype: bfloat16 or float32" in result.stderr
    emb = open_embeddings(workspace / "embeddings/broken")
    assert list(emb.meta.sample_id) == list(samples.question_id[: 2 * (first // 2)]), "earlier batches kept"
    assert np.isfinite(emb.get("query_token", 0)).all()
