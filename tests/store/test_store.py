"""Parts, reader and export on real HDF5 files."""

from __future__ import annotations

import errno
import os
import resource
import shutil
import signal
from contextlib import contextmanager
from pathlib import Path

import h5py
import numpy as np
import pytest

from halp.store import open_embeddings
from halp.store.export import export_per_question
from halp.store.parts import NonFiniteStates, PartBuffer, PartFolder, PartWriteError, write_part
from tests.conftest import file_limit, halp

LAYERS = [0, 5]
H, D_VIS, K = 8, 4, 3


def sample_row(i: int) -> tuple[dict, dict]:
    rng = np.random.default_rng(i)
    meta = {
        "sample_id": f"q{i}",
        "image_id": f"img{i % 3}.png",
        "image_sha256": f"sha{i % 3}",
        "question": f"question {i}?",
        "ground_truth": "yes",
        "source": "demo",
        "category": "existence",
        "answer": f"answer {i}",
        "gt_repaired": 0,
        "vision_token_pos": 4,
        "query_token_pos": 20 + i,
        "seq_len": 21 + i,
        "n_image_tokens": 12,
        "n_generated_tokens": 3,
    }
    arrays = {
        "vision_only": rng.normal(size=D_VIS).astype(np.float32),
        "vision_token": rng.normal(size=(len(LAYERS), H)).astype(np.float32),
        "query_token": rng.normal(size=(len(LAYERS), H)).astype(np.float32),
        "first_token_logprobs": -rng.random(K).astype(np.float32),
        "first_token_ids": rng.integers(0, 100, K),
    }
    return meta, arrays


ATTRS = {"config_hash": "abc", "layers": LAYERS, "model_name": "m", "storage_dtype": "float32"}


def write(folder, ids, errors=(), config_hash="abc", dtype="float32"):
    buffer = PartBuffer()
    for i in ids:
        buffer.add(*sample_row(i))
    for i in errors:
        buffer.fail(f"q{i}", "load_image", "broken", "data", "hash")
    path = PartFolder(folder, config_hash).next_part()
    folder.mkdir(parents=True, exist_ok=True)
    write_part(path, buffer, ATTRS | {"config_hash": config_hash}, dtype)
    return path


def test_reader_joins_parts_in_manifest_order(tmp_path):
    write(tmp_path, [0, 1, 2])
    write(tmp_path, [3, 4], errors=[5])
    order = ["q4", "q0", "q5", "q3", "q1", "q2"]
    PartFolder(tmp_path, "abc").write_manifest("m", order)
    emb = open_embeddings(tmp_path)
    assert list(emb.meta.sample_id) == ["q4", "q0", "q3", "q1", "q2"]
    assert list(emb.errors.sample_id) == ["q5"]
    expected = np.stack([sample_row(int(s[1:]))[1]["query_token"][1] for s in emb.meta.sample_id])
    np.testing.assert_array_equal(emb.get("query_token", 5), expected)
    assert emb.get("vision_only").shape == (5, D_VIS)
    assert emb.meta.query_token_pos.tolist() == [24, 20, 23, 21, 22]
    with pytest.raises(KeyError, match=r"layer 3 was not extracted; stored layers: \[0, 5\]"):
        emb.get("vision_token", 3)


def test_one_layer_is_one_chunked_read(tmp_path):
    path = write(tmp_path, range(10))
    with h5py.File(path) as f:
        assert f["vision_token"].chunks == (10, 1, H)


def test_prepare_drops_stale_parts_and_temp_files(tmp_path):
    write(tmp_path, [0, 1])
    write(tmp_path, [2], errors=[3], config_hash="old")
    (tmp_path / "part-00009.h5.tmp").write_bytes(b"half written")
    parts = PartFolder(tmp_path, "abc")
    parts.clean()
    assert parts.extracted() == {"q0": "sha0", "q1": "sha1"} and parts.failures() == {}
    assert [p.name for p in tmp_path.iterdir()] == ["part-00000.h5"]


def test_concurrent_processes_never_pick_the_same_part_name(tmp_path):
    write(tmp_path, [0])
    write(tmp_path, [1])  # part-00000, part-00001 from an earlier single-process run
    folders = [PartFolder(tmp_path, "abc", rank, 3) for rank in range(3)]
    names = [[folder.next_part().name for _ in range(3)] for folder in folders]
    flat = [name for rank_names in names for name in rank_names]
    assert len(set(flat)) == 9
    assert (
        names[0][0] == "part-00003.h5" and names[1][0] == "part-00004.h5" and names[2][0] == "part-00002.h5"
    )


def test_float16_storage_refuses_infinities(tmp_path):
    buffer = PartBuffer()
    meta, arrays = sample_row(0)
    arrays["query_token"][0, 0] = 1e6  # beyond float16's 65504
    buffer.add(meta, arrays)
    with pytest.raises(
        OverflowError, match=r"1 sample\(s\) overflows float16.*: q0\. .*storage_dtype: float32"
    ):
        write_part(tmp_path / "part-00000.h5", buffer, ATTRS, "float16")
    assert list(tmp_path.iterdir()) == [], "a refused part leaves nothing behind"
    small = PartBuffer()
    small.add(*sample_row(1))
    write_part(tmp_path / "part-00000.h5", small, ATTRS, "float16")
    assert open_embeddings(tmp_path).get("query_token", 0).dtype == np.float16


def test_a_non_finite_state_and_every_overflowed_sample_are_refused_by_name(tmp_path):
    def buffer(values: dict[int, list[float]]) -> PartBuffer:
        rows = PartBuffer()
        for i, pair in values.items():
            meta, arrays = sample_row(i)
            arrays["query_token"][0, :2] = pair
            rows.add(meta, arrays)
        return rows

    part = tmp_path / "part-00000.h5"
    non_finite = buffer({0: [np.nan, 1], 1: [1, 2], 3: [np.inf, 0]})
    with pytest.raises(NonFiniteStates, match=r"query_token that are not finite .*2 sample\(s\): q0, q3\. "):
        write_part(part, non_finite, ATTRS, "float32")
    overflowing = buffer({i: [1e6, 2] for i in range(1, 9)})
    with pytest.raises(OverflowError, match=r"8 sample\(s\) overflows float16.*q5 and 3 more"):
        write_part(part, overflowing, ATTRS, "float16")
    assert list(tmp_path.iterdir()) == [], "a refused part leaves nothing behind"


def test_mixed_configurations_are_refused(tmp_path):
    write(tmp_path, [0])
    write(tmp_path, [1], config_hash="other")
    with pytest.raises(ValueError, match="mixes parts of 2 configurations"):
        open_embeddings(tmp_path)


def test_empty_folder_says_what_to_run(tmp_path):
    with pytest.raises(FileNotFoundError, match="halp extract"):
        open_embeddings(tmp_path)


def test_per_question_export_has_the_seed_layout(tmp_path):
    write(tmp_path / "emb", [0, 1])
    out = export_per_question(open_embeddings(tmp_path / "emb"), tmp_path / "export.h5")
    with h5py.File(out) as f:
        assert sorted(f) == ["q0", "q1"]
        group = f["q1"]
        assert group["answer"][()].decode() == "answer 1"
        assert group["ground_truth_answer"][()].decode() == "yes"
        assert group["vision_only_representation"].shape == (D_VIS,)
        assert sorted(group["vision_token_representation"]) == ["layer_0", "layer_5"]
        np.testing.assert_array_equal(
            group["query_token_representation/layer_5"][()], sample_row(1)[1]["query_token"][1]
        )


ODD_ANSWERS = ["WV$\x00 assV$ ass", "\x00", "lone \ud800 surrogate", "é😀\u2028", "", "long " * 50_000]


def test_any_answer_a_model_can_produce_round_trips_byte_exact(tmp_path):
    buffer = PartBuffer()
    for i, answer in enumerate(ODD_ANSWERS):
        meta, arrays = sample_row(i)
        buffer.add(meta | {"answer": answer, "question": answer[:50]}, arrays)
    buffer.fail("q99", "extract", "RuntimeError: \x00 in a message", "runtime")
    write_part(tmp_path / "part-00000.h5", buffer, ATTRS, "float32")
    emb = open_embeddings(tmp_path)
    assert emb.meta.answer.tolist() == ODD_ANSWERS
    assert emb.meta.question.tolist() == [a[:50] for a in ODD_ANSWERS]
    assert emb.errors.message.tolist() == ["RuntimeError: \x00 in a message"]


def test_a_folder_with_duplicate_sample_ids_is_refused(tmp_path):
    write(tmp_path, [0, 1])
    write(tmp_path, [1, 2])
    with pytest.raises(ValueError, match=r"1 sample ids in more than one row \(e.g. q1\).*delete the folder"):
        open_embeddings(tmp_path).get("vision_only")


def test_a_later_outcome_replaces_an_earlier_failure(tmp_path):
    write(tmp_path, [0], errors=[1, 2])
    write(tmp_path, [1], errors=[2])  # a later run extracted q1 and failed q2 again
    emb = open_embeddings(tmp_path)
    assert emb.meta.sample_id.tolist() == ["q0", "q1"]
    assert emb.errors.sample_id.tolist() == ["q2"]
    assert PartFolder(tmp_path, "abc").failures().keys() == {"q1", "q2"}


@contextmanager
def file_size_limit(size: int):
    """A real write failure: the kernel refuses to grow any file of this process past `size` (EFBIG)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    previous = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (size, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, previous)


def test_a_failed_write_is_retried_then_stops_with_what_where_and_how_much(tmp_path, caplog):
    buffer = PartBuffer()
    for i in range(20):
        buffer.add(*sample_row(i))
    path = tmp_path / "part-00000.h5"
    with file_size_limit(4096), pytest.raises(PartWriteError) as raised:
        write_part(path, buffer, ATTRS, "float32", retry_seconds=[0, 0])
    message = str(raised.value)
    assert str(path) in message and "20 samples" in message and "MiB" in message and "free there" in message
    assert "File too large" in message and "finished parts are kept" in message
    assert [r.getMessage().split(" (")[0] for r in caplog.records] == ["could not write part-00000.h5"] * 2
    assert list(tmp_path.iterdir()) == [], "no part and no .tmp is left"
    write_part(path, buffer, ATTRS, "float32")  # the same buffer, written once the disk lets it
    assert open_embeddings(tmp_path).meta.sample_id.tolist() == [f"q{i}" for i in range(20)]


def test_dropped_rows_leave_by_a_rewrite_that_survives_a_kill_midway(tmp_path):
    write(tmp_path, [0, 1, 2])
    write(tmp_path, [3, 4], errors=[5])
    before = {f"q{i}": sample_row(i)[1]["query_token"][1] for i in (0, 2, 3, 4)}
    original = (tmp_path / "part-00000.h5").read_bytes()
    PartFolder(tmp_path, "abc").drop_rows({"q1"})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["part-00001.h5", "part-00002.h5"]
    emb = open_embeddings(tmp_path)
    assert sorted(emb.meta.sample_id) == sorted(before) and emb.errors.sample_id.tolist() == ["q5"]
    for sample_id, values in zip(emb.meta.sample_id, emb.get("query_token", 5), strict=True):
        np.testing.assert_array_equal(values, before[sample_id])

    (tmp_path / "part-00000.h5").write_bytes(original)  # as if killed before the old part was removed
    assert sorted(open_embeddings(tmp_path).meta.sample_id) == sorted(before), "the replaced part is ignored"
    PartFolder(tmp_path, "abc").clean()
    assert not (tmp_path / "part-00000.h5").exists()


def test_a_copy_named_like_a_part_is_ignored_and_a_foreign_file_is_refused_never_deleted(tmp_path, caplog):
    path = write(tmp_path, [0, 1])
    shutil.copy(path, tmp_path / "part-00000 (copy).h5")
    assert list(open_embeddings(tmp_path).meta.sample_id) == ["q0", "q1"]
    assert "ignoring part-00000 (copy).h5: not a part's name" in caplog.text
    with h5py.File(tmp_path / "part-00099.h5", "w") as f:  # someone else's HDF5 file
        f["x"] = [1, 2, 3]
    with pytest.raises(ValueError, match=r"part-00099.h5 was not written by halp .* move it out"):
        PartFolder(tmp_path, "another config").clean()
    assert (tmp_path / "part-00099.h5").exists() and path.exists(), "nothing was deleted"


def test_a_truncated_part_names_the_file_and_what_to_do(tmp_path):
    path = write(tmp_path, [0, 1])
    path.write_bytes(path.read_bytes()[:1000])
    for read in (lambda: open_embeddings(tmp_path).meta, lambda: PartFolder(tmp_path, "abc").extracted()):
        with pytest.raises(
            ValueError, match=r"part-00000.h5 cannot be read .* Remove it, or .*--remove-damaged"
        ):
            read()


def test_remove_damaged_removes_only_the_unreadable_part(tmp_path):
    kept = write(tmp_path, [0, 1])
    damaged = write(tmp_path, [2, 3])
    damaged.write_bytes(damaged.read_bytes()[:1000])
    with h5py.File(tmp_path / "part-00099.h5", "w") as f:  # readable, but not halp's: never removed
        f["x"] = [1, 2, 3]
    with pytest.raises(ValueError, match="cannot be read"):  # without the option nothing is removed
        PartFolder(tmp_path, "abc").clean()
    assert damaged.exists()
    with pytest.raises(ValueError, match="was not written by halp"):
        PartFolder(tmp_path, "abc").clean(remove_damaged=True)
    assert not damaged.exists() and kept.exists() and (tmp_path / "part-00099.h5").exists()
    (tmp_path / "part-00099.h5").unlink()
    assert PartFolder(tmp_path, "abc").extracted().keys() == {"q0", "q1"}


def test_remove_damaged_refuses_a_file_named_like_a_part_that_is_no_hdf5_at_all(tmp_path):
    kept = write(tmp_path, [0, 1])
    notes = tmp_path / "part-00007.h5"
    notes.write_text("my notes, saved here by mistake\n")
    for run in (
        lambda: PartFolder(tmp_path, "abc").clean(remove_damaged=True),
        lambda: open_embeddings(tmp_path),
    ):
        with pytest.raises(
            ValueError, match=r"part-00007.h5 is named like a part but is no HDF5 file .*Move it"
        ):
            run()
    assert notes.read_text() == "my notes, saved here by mistake\n" and kept.exists()
    notes.write_bytes(b"")  # empty: nothing to lose
    PartFolder(tmp_path, "abc").clean(remove_damaged=True)
    assert not notes.exists() and PartFolder(tmp_path, "abc").extracted().keys() == {"q0", "q1"}


def test_a_read_only_folder_stops_with_the_documented_message_before_any_work(tmp_path, monkeypatch):
    """Tests run as root, who writes anywhere: the error of a read-only mount is raised where it would be."""
    write(tmp_path, [0, 1])
    PartFolder(tmp_path, "abc").write_manifest("m", ["q0", "q1"])

    def read_only(self, missing_ok=False):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(self))

    monkeypatch.setattr(Path, "unlink", read_only)
    with pytest.raises(PartWriteError, match=r"cannot change .*Read-only file system.*nothing was lost"):
        PartFolder(tmp_path, "abc").clean()


def test_part_numbers_past_five_digits_are_parts_too(tmp_path):
    path = write(tmp_path, [0])
    path.rename(tmp_path / "part-100000.h5")  # next_part's name once 100,000 parts were numbered
    assert list(open_embeddings(tmp_path).meta.sample_id) == ["q0"]


def test_a_finished_folder_missing_a_part_is_refused_naming_it(tmp_path):
    write(tmp_path, [0, 1, 2])
    second = write(tmp_path, [3, 4])
    PartFolder(tmp_path, "abc").write_manifest("m", [f"q{i}" for i in range(5)])
    assert len(open_embeddings(tmp_path).meta) == 5
    second.unlink()  # deleted after the run finished
    with pytest.raises(ValueError, match=rf"lists \(missing: {second.name}\).*halp extract --model"):
        open_embeddings(tmp_path)
    write(tmp_path, [3, 4])  # back as it was
    assert len(open_embeddings(tmp_path).meta) == 5
    shutil.copy(second, tmp_path / "part-00009.h5")  # a part the run never wrote
    with pytest.raises(ValueError, match=r"lists \(not listed: part-00009.h5\)"):
        open_embeddings(tmp_path)


def test_no_manifest_is_written_over_samples_a_removed_part_took_with_it(tmp_path):
    write(tmp_path, [0, 1, 2])
    write(tmp_path, [3], errors=[4]).unlink()  # removed while the run went
    with pytest.raises(PartWriteError, match=r"2 of 5 samples .* neither a stored row nor a recorded error"):
        PartFolder(tmp_path, "abc").write_manifest("m", [f"q{i}" for i in range(5)])
    assert not (tmp_path / "manifest.json").exists()


def test_export_stores_any_answer_exactly(tmp_path):
    buffer = PartBuffer()
    for i, answer in enumerate(ODD_ANSWERS):
        meta, arrays = sample_row(i)
        buffer.add(meta | {"answer": answer}, arrays)
    (tmp_path / "emb").mkdir()
    write_part(tmp_path / "emb" / "part-00000.h5", buffer, ATTRS, "float32")
    out = export_per_question(open_embeddings(tmp_path / "emb"), tmp_path / "export.h5")
    with h5py.File(out) as f:
        stored = []
        for i in range(len(ODD_ANSWERS)):
            answer = f[f"q{i}/answer"]
            raw = answer[()]
            text = (
                raw.tobytes().decode("utf-8", "surrogatepass")
                if "utf8_bytes" in answer.attrs
                else raw.decode()
            )
            stored.append(text)
    assert stored == ODD_ANSWERS


def test_export_onto_a_full_disk_says_so_once_and_the_earlier_file_stands_whole(tmp_path):
    write(tmp_path / "data/embeddings/m", [0, 1, 2])
    PartFolder(tmp_path / "data/embeddings/m", "abc").write_manifest("m", ["q0", "q1", "q2"])
    (tmp_path / "params.yaml").write_text("models:\n  m:\n    model: unused\n")
    halp("export", "--model", "m", "--out", "m.h5", cwd=tmp_path)
    earlier = (tmp_path / "m.h5").read_bytes()
    full = halp(
        "export", "--model", "m", "--out", "m.h5", cwd=tmp_path, check=False, preexec_fn=file_limit(2048)
    )
    assert full.returncode == 2 and "Traceback" not in full.stderr, full.stderr
    assert "could not write m.h5 (File too large; " in full.stderr
    assert "no partial file is left, and the embeddings are untouched" in full.stderr
    assert (tmp_path / "m.h5").read_bytes() == earlier and not list(tmp_path.glob("*.tmp")), "stands whole"


def test_export_refuses_an_unfinished_extraction_unless_asked(tmp_path):
    write(tmp_path / "data/embeddings/m", [0, 1])  # parts, no manifest: a run still going, or killed
    (tmp_path / "params.yaml").write_text("models:\n  m:\n    model: unused\n")
    command = ["export", "--model", "m", "--out", "m.h5"]
    refused = halp(*command, cwd=tmp_path, check=False)
    assert (
        refused.returncode == 2 and "has no manifest.json: its extraction has not finished" in refused.stderr
    )
    assert not (tmp_path / "m.h5").exists()
    halp(*command, "--allow-incomplete", cwd=tmp_path)
    assert sorted(h5py.File(tmp_path / "m.h5")) == ["q0", "q1"]
