"""The GPU suite's dry run: every part on tiny models on this CPU, so the script is known to work before
any device time is spent on it."""

from __future__ import annotations

import json
import subprocess
import sys

from tests.conftest import REPO

PARTS = ["batches", "attention", "profile", "check", "mllama", "phi4mm", "peers", "lens"]


def test_every_part_runs_and_records_its_results(tmp_path):
    command = [
        sys.executable, str(REPO / "benchmarks/gpu_suite.py"), "--size", "tiny", "--device", "cpu",
        "--out", str(tmp_path), "--batches", "1", "2", "--image-size", "224", "--new-tokens", "4",
        "--rounds", "1",
    ]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    lines = [json.loads(line) for line in (tmp_path / "suite.jsonl").read_text().splitlines()]
    done = {line["of"]: line["status"] for line in lines if line["part"] == "done"}
    assert done == dict.fromkeys(PARTS, "ok")

    def records(part: str) -> list[dict]:
        return [line for line in lines if line["part"] == part]

    assert [r["batch"] for r in records("batch")] == [1, 2]
    assert all(r["samples_per_s"] > 0 and r["ratio_to_seed_loop"] > 0 for r in records("batch"))
    (best,) = records("best")
    assert best["batch"] == max(records("batch"), key=lambda r: r["samples_per_s"])["batch"]
    assert [r["attention"] for r in records("attention")] == ["sdpa", "eager"]
    assert {r["batch"] for r in records("attention") + records("engine")} == {best["batch"]}
    assert {r["arch"] for r in records("engine")} == {"mllama", "phi4mm"}
    (profile,) = records("profile")
    assert 0 < profile["preprocessing_share"] < 1 and profile["prefill_s"] > 0
    assert (
        profile["host_syncs_added_by_hooks"]
        == profile["host_syncs_hooked_prefill"] - profile["host_syncs_plain_prefill"]
    )
    assert "Name" in (tmp_path / "profile.txt").read_text()
    (check,) = records("check")
    assert check["passed"] and set(check["max_relative_error"]) == {
        "vision_only",
        "vision_token",
        "query_token",
    }
    (peers,) = records("peers")  # nnsight is not installed here: halp and the hooks script, held equal
    assert set(peers["results"]) == {"halp", "hooks"} and peers["skipped"]["nnsight"].startswith(
        "not installed"
    )
    assert all(r["samples_per_s"] > 0 for r in peers["results"].values())
    (lens,) = records("lens")
    assert "top-5 as float32's: 100%" in lens["output"]


def test_a_part_that_fails_is_recorded_and_the_others_run(tmp_path):
    """An unknown device fails both model parts alone; the suite goes on to the end and exits 1."""
    command = [
        sys.executable, str(REPO / "benchmarks/gpu_suite.py"), "--size", "tiny", "--device", "cuda:7",
        "--out", str(tmp_path), "--parts", "check", "mllama",
    ]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert result.returncode == 1
    lines = [json.loads(line) for line in (tmp_path / "suite.jsonl").read_text().splitlines()]
    assert [(line["of"], line["status"]) for line in lines if line["part"] == "done"] == [
        ("check", "exit 1"),
        ("mllama", "exit 1"),
    ]


def test_a_part_past_its_cap_is_cut_and_recorded_so(tmp_path):
    command = [
        sys.executable, str(REPO / "benchmarks/gpu_suite.py"), "--size", "tiny", "--device", "cpu",
        "--out", str(tmp_path), "--parts", "batches", "--cap-scale", "0.01",
    ]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert result.returncode == 1
    (done,) = [json.loads(line) for line in (tmp_path / "suite.jsonl").read_text().splitlines()][-1:]
    assert done == done | {"part": "done", "of": "batches", "status": "cut at its cap of 2 s"}
