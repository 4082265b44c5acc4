"""One writer per part folder: a second run is refused (or waits), a killed holder never blocks."""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from halp.store import open_embeddings
from halp.store.lock import FolderBusy, lock_path, writing
from halp.store.parts import PartWriteError
from tests.conftest import halp, set_params

MODEL = "qwen2_vl"


def test_a_second_extract_on_a_held_folder_is_refused_naming_the_holder(workspace):
    folder = workspace / "embeddings" / MODEL
    with writing(folder):  # a real flock, as another run's
        refused = halp("extract", "--model", MODEL, cwd=workspace, check=False)
    assert refused.returncode == 2, refused.stderr
    assert f"is being written by pid {os.getpid()}" in refused.stderr and "--wait" in refused.stderr
    assert not folder.exists() or not list(folder.iterdir()), "the refused run wrote nothing"
    halp("extract", "--model", MODEL, cwd=workspace)  # released: the next run goes
    assert open_embeddings(folder).manifest is not None


def test_a_folder_reached_through_a_symlink_is_the_same_folder_and_refused(tmp_path):
    folder = tmp_path / "embeddings" / MODEL
    folder.mkdir(parents=True)
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / MODEL).symlink_to(folder)  # another run's out_dir, pointing at this one
    held = pytest.raises(FolderBusy, match=f"{folder} is being written by pid {os.getpid()}")
    with writing(folder), held, writing(tmp_path / "other" / MODEL):
        pass


def test_with_wait_a_second_run_starts_after_the_first_and_nothing_is_lost_or_doubled(workspace):
    folder, log = workspace / "embeddings" / MODEL, workspace / "second.log"
    command = [sys.executable, "-m", "halp", "extract", "--model", MODEL, "--wait"]
    with writing(folder), log.open("w") as stderr:
        waiting = subprocess.Popen(command, cwd=workspace, stderr=stderr)
        deadline = time.monotonic() + 120
        while "waiting for it to finish" not in log.read_text():
            assert waiting.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.2)
        assert not list(folder.glob("part-*")), "it waits before writing anything"
    assert waiting.wait(timeout=300) == 0, log.read_text()
    emb = open_embeddings(folder)
    assert len(emb.meta) == 24 and not emb.meta.sample_id.duplicated().any()


def test_a_holder_killed_by_sigkill_leaves_no_lock_behind(workspace):
    folder = workspace / "embeddings" / MODEL
    holder = subprocess.Popen(
        [sys.executable, "-c", f"from halp.store.lock import writing; import pathlib, time\n"
         f"with writing(pathlib.Path({str(folder)!r})):\n    print('held', flush=True); time.sleep(600)"],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert holder.stdout.readline().strip() == "held"
    os.kill(holder.pid, signal.SIGKILL)
    holder.wait()
    assert "pid" in lock_path(folder).read_text(), "the file still names the dead holder"
    halp("extract", "--model", MODEL, cwd=workspace)


@pytest.mark.parametrize(
    ("command", "folder"),
    [("vision-tokens", "data/vision_tokens"), ("contextual-bank", "data/banks"), ("lens", "data/lens")],
)
def test_every_part_folder_writer_takes_the_lock(workspace, command, folder):
    set_params(workspace, {"lens": {"corpus": "corpus.txt"}})
    (workspace / "corpus.txt").write_text("a red circle\n")
    with writing(workspace / folder / MODEL):
        refused = halp(command, "--model", MODEL, cwd=workspace, check=False)
    assert refused.returncode == 2 and "is being written by pid" in refused.stderr, refused.stderr


def test_a_lock_file_on_a_read_only_mount_gives_the_documented_message(tmp_path, monkeypatch):
    """Tests run as root, who writes anywhere: the error of a read-only mount is raised where it would be."""

    def read_only(self, *args, **kwargs):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(self))

    monkeypatch.setattr(Path, "mkdir", read_only)
    folder = tmp_path / "embeddings" / MODEL
    with (
        pytest.raises(PartWriteError, match=rf"could not write {lock_path(folder)} \(Read-only file system;"),
        writing(folder),
    ):
        pytest.fail("the body ran without its lock")
