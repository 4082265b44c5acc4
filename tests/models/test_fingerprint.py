"""What identifies a model's weights: content for local folders (of any size), the revision for hub ids."""

from __future__ import annotations

import os

import pytest

from halp.digests import cache_path
from halp.models.fingerprint import model_fingerprint


@pytest.fixture()
def big_model(tmp_path, monkeypatch):
    """A local model folder with a sparse 1 GiB weights file (fast to make; a real read to hash)."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    with (folder / "model.safetensors").open("wb") as f:
        f.truncate((1 << 30) + 1)
    return folder


def overwrite_one_byte(path, keep_mtime: bool = False) -> None:
    stat = path.stat()
    with path.open("r+b") as f:
        f.seek(stat.st_size // 2)
        f.write(b"\x01")
    if keep_mtime:
        os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))


def test_weights_retrained_in_place_at_the_same_size_change_the_fingerprint(big_model):
    first = model_fingerprint(str(big_model), None)
    assert first.startswith("sha256:") and model_fingerprint(str(big_model), None) == first
    overwrite_one_byte(big_model / "model.safetensors")
    assert model_fingerprint(str(big_model), None) != first


def test_a_file_is_read_again_only_when_its_size_mtime_or_inode_change(big_model):
    first = model_fingerprint(str(big_model), None)
    assert cache_path().is_file()
    overwrite_one_byte(big_model / "model.safetensors", keep_mtime=True)  # as DVC, trust the stamp
    assert model_fingerprint(str(big_model), None) == first, "the cached digest was used"
    cache_path().unlink()
    assert model_fingerprint(str(big_model), None) != first, "without the cache the content is read"


def test_hub_ids_are_identified_by_their_revision():
    assert model_fingerprint("Qwen/Qwen2-VL-7B-Instruct", None) == "Qwen/Qwen2-VL-7B-Instruct@main"
    assert model_fingerprint("Qwen/Qwen2-VL-7B-Instruct", "abc123") == "Qwen/Qwen2-VL-7B-Instruct@abc123"
