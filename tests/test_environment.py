"""The environment is the locked one: a drift in a number-changing package fails here, warns in extract."""

from __future__ import annotations

import logging

import numpy as np

from halp.config import load_params
from halp.environment import (
    FIX,
    LOCK_FILE,
    NUMERIC_PACKAGES,
    installed_version,
    lock_mismatches,
    read_lock,
)
from halp.extract.run import extract
from tests.conftest import halp, set_params


def test_number_changing_packages_are_the_locked_versions():
    mismatches = lock_mismatches(NUMERIC_PACKAGES)
    assert not mismatches, "\n".join([*map(str, mismatches), FIX])


def test_every_locked_package_is_installed_at_its_version():
    mismatches = lock_mismatches()
    assert not mismatches, "\n".join([*map(str, mismatches), FIX])


def test_lock_pins_every_package_with_hashes():
    pins = read_lock(LOCK_FILE)
    assert pins["transformers"] == "5.23.0"  # 5.24 needs peft>=0.22, not released (docs/getting-started.md)
    assert {"torch", "pytest", "ruff", "pip-tools", "pip", "setuptools"} <= pins.keys()
    blocks = LOCK_FILE.read_text().split("==")[1:]
    assert len(blocks) == len(pins)
    assert all("--hash=sha256:" in block for block in blocks)


def drifted_lock(tmp_path):
    """The real lock with numpy pinned to a version that is not installed."""
    lock = tmp_path / "requirements.lock"
    lock.write_text(LOCK_FILE.read_text().replace(f"\nnumpy=={np.__version__} ", "\nnumpy==1.0.0 "))
    return lock


def test_a_drift_names_the_package_both_versions_and_the_fix(tmp_path):
    (mismatch,) = lock_mismatches(NUMERIC_PACKAGES, drifted_lock(tmp_path))
    message = str(mismatch)
    assert mismatch.package == "numpy"
    assert "1.0.0" in message and np.__version__ in message
    assert "make venv" in FIX and "make lock" in FIX
    assert installed_version("no-such-package-anywhere") is None


def test_extract_warns_about_a_drift_and_goes_on(workspace, tmp_path, monkeypatch, caplog):
    set_params(workspace, {"data.sample_size": 2})
    halp("sample", cwd=workspace)
    monkeypatch.setattr("halp.environment.LOCK_FILE", drifted_lock(tmp_path))
    monkeypatch.chdir(workspace)
    with caplog.at_level(logging.WARNING, logger="halp.environment"):
        folder = extract(load_params(workspace / "params.yaml"), "qwen2_vl")
    (warning,) = [r.getMessage() for r in caplog.records if r.name == "halp.environment"]
    assert "numpy: requirements.lock has 1.0.0" in warning and "make venv" in warning
    assert len(list(folder.glob("part-*.h5"))) == 1
