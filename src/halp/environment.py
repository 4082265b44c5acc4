"""The environment numbers depend on: which installed packages differ from requirements.lock, and the CPU.

Embeddings are only comparable when the packages that compute them are the same. The lock pins every
package; the ones below change numbers when their version changes, so a test fails on them and
`halp extract` warns about them (a GPU box may rightly run other builds, e.g. a CUDA torch).
"""

from __future__ import annotations

import logging
import platform
import re
import subprocess
from collections.abc import Iterable
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from packaging.utils import canonicalize_name

NUMERIC_PACKAGES = ("torch", "transformers", "tokenizers", "accelerate", "peft", "timm", "numpy", "h5py")
LOCK_FILE = Path(__file__).resolve().parents[2] / "requirements.lock"  # present in a source checkout
FIX = "`make venv` installs the locked set; if the new version is deliberate, `make lock` updates the lock"
_PIN = re.compile(r"^(?P<name>[A-Za-z0-9][A-Za-z0-9._-]*)==(?P<version>\S+)")

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Mismatch:
    package: str
    locked: str
    installed: str | None

    def __str__(self) -> str:
        found = f"{self.installed} is installed" if self.installed else "it is not installed"
        return f"{self.package}: requirements.lock has {self.locked}, {found}"


def read_lock(path: Path) -> dict[str, str]:
    """Package (canonical name) -> pinned version, from a pip-compile lock."""
    pins = (_PIN.match(line) for line in path.read_text().splitlines())
    return {canonicalize_name(pin["name"]): pin["version"] for pin in pins if pin}


def installed_version(package: str) -> str | None:
    try:
        return version(package)
    except PackageNotFoundError:
        return None


def lock_mismatches(packages: Iterable[str] | None = None, lock: Path | None = None) -> list[Mismatch]:
    """Locked packages (all, or those named) whose installed version is another or none."""
    lock = lock or LOCK_FILE
    pins = read_lock(lock)
    names = list(pins) if packages is None else [canonicalize_name(p) for p in packages]
    if missing := [name for name in names if name not in pins]:
        raise KeyError(f"{', '.join(missing)} not in {lock}: add to pyproject.toml, then `make lock`")
    found = {name: installed_version(name) for name in names}
    return [Mismatch(name, pins[name], found[name]) for name in names if found[name] != pins[name]]


def warn_if_unlocked() -> None:
    """Log a warning per number-changing package that differs from the lock (none without a lock)."""
    if not LOCK_FILE.is_file():
        return
    for mismatch in lock_mismatches(NUMERIC_PACKAGES):
        log.warning(
            "%s; results may differ from embeddings made with the lock (each part records its versions "
            "in `package_versions`). %s",
            mismatch,
            FIX,
        )


def cpu_name() -> str:
    """The CPU a benchmark or a measurement ran on, with its family and model: float results differ in the
    last digits between vendors and generations."""
    try:
        lines = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout.splitlines()
    except (OSError, subprocess.CalledProcessError):
        return platform.processor() or "unknown CPU"
    facts = dict(line.split(":", 1) for line in lines if ":" in line)
    name = facts.get("Model name", "unknown CPU").strip()
    family, model = facts.get("CPU family", "").strip(), facts.get("Model", "").strip()
    return f"{name} (family {family}, model {model})" if family and model else name
