"""Session fixtures: the real tiny models, built once and loaded through the same path as real ones."""

from __future__ import annotations

import os
import resource
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # an accidental hub call fails at once instead of hanging

from halp.config import ModelSettings
from halp.models.loading import LoadedModel, load_model
from halp.models.synthetic import build_synthetic

QWEN_ARCHS = ["qwen2_vl", "qwen2_5_vl"]
ARCHS = [*QWEN_ARCHS, "mllama", "phi4mm", "llava_next", "gemma3", "smolvlm", "fast_vlm", "molmo2"]
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def own_cache(tmp_path_factory, monkeypatch):
    """Each test its own cache folder (digests, judge replies), as a fresh machine has, and never the
    user's: a reply kept by one test must not answer another's request."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path_factory.mktemp("cache")))


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("tiny")
    for arch in ARCHS:
        build_synthetic(arch, out, seed=0)
    return out


@pytest.fixture(scope="session")
def load_tiny(tiny_dir):
    cache: dict[str, LoadedModel] = {}

    def load(arch: str) -> LoadedModel:
        if arch not in cache:
            cache[arch] = load_model(ModelSettings(model=str(tiny_dir / arch)))
        return cache[arch]

    return load


def random_image(height: int, width: int, seed: int) -> Image.Image:
    pixels = np.random.default_rng(seed).integers(0, 256, size=(height, width, 3), dtype=np.uint8)
    return Image.fromarray(pixels)


# Different sizes give different patch grids (Qwen), tile counts (Mllama: 1 and 2) and crop counts
# (Phi-4: 2 and 3), and questions of different lengths, so a batch needs real left padding.
MIXED = [
    ((90, 90), "Is the red circle to the left of the blue square?"),
    ((60, 150), "What color?"),
    ((150, 450), "Why is the purple triangle touching the green circle in this picture?"),
]


@pytest.fixture(scope="session")
def mixed_batch():
    return [random_image(h, w, seed=i) for i, ((h, w), _) in enumerate(MIXED)], [q for _, q in MIXED]


def halp(*args: str, cwd: Path, check: bool = True, **options) -> subprocess.CompletedProcess:
    """Run the real `halp` console entry in a subprocess (options: subprocess.run's, e.g. preexec_fn)."""
    result = subprocess.run(
        [sys.executable, "-m", "halp", *args], cwd=cwd, capture_output=True, text=True, timeout=600, **options
    )
    if check and result.returncode != 0:
        raise AssertionError(f"halp {' '.join(args)} failed:\n{result.stderr[-3000:]}")
    return result


def file_limit(size: int):
    """preexec_fn: the kernel refuses to grow any file of the child past `size` bytes (EFBIG), as a disk
    that is full refuses (tests run as root, whom permissions do not stop)."""

    def limit() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (size, resource.RLIM_INFINITY))

    return limit


def start_extract(model: str, cwd: Path, **options) -> subprocess.Popen:
    """`halp extract` in the background (options: Popen's; stdout is discarded, stderr too by default)."""
    options = {"stderr": subprocess.DEVNULL} | options
    command = [sys.executable, "-m", "halp", "extract", "--model", model]
    return subprocess.Popen(command, cwd=cwd, stdout=subprocess.DEVNULL, **options)


def wait_for_first_part(proc: subprocess.Popen, folder: Path) -> None:
    deadline = time.monotonic() + 180
    while not list(folder.glob("part-*.h5")):
        assert proc.poll() is None and time.monotonic() < deadline, "extract ended before its first part"
        time.sleep(0.005)


def kill_after_first_part(model: str, folder: Path, cwd: Path) -> None:
    """Start `halp extract` (and any workers it launches) and SIGKILL them all once a part exists."""
    proc = start_extract(model, cwd, start_new_session=True)
    wait_for_first_part(proc, folder)
    os.killpg(proc.pid, signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL
    assert not (folder / "manifest.json").exists()


@pytest.fixture()
def workspace(tmp_path, tiny_dir) -> Path:
    """A folder with a demo dataset, a sample of it and a params.yaml pointing at the tiny models."""
    return make_workspace(tmp_path, tiny_dir)


def make_workspace(tmp_path: Path, tiny_dir: Path, sample_size: int = 24) -> Path:
    """The `workspace` fixture's folder, for fixtures of a wider scope."""
    params = {
        "demo": {"out_dir": "demo", "n_images": 12, "seed": 0},
        "data": {
            "source": "demo/questions.csv",
            "images_dir": "demo/images",
            "sample_size": sample_size,
            "seed": 0,
            "out": "sampled/samples.csv",
        },
        "extract": {"out_dir": "embeddings", "top_k": 5},
        "summary": {"out_dir": "summary"},
        "models": {
            arch: {
                "model": str(tiny_dir / arch),
                "layers": [0, 0.5, -1],
                "batch_size": 2,
                "checkpoint_interval": 4,
                "max_new_tokens": 6,
            }
            for arch in QWEN_ARCHS
        },
    }
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    from halp.config import load_params
    from halp.data.demo import generate_demo
    from halp.data.sample import sample_dataset

    loaded = load_params(tmp_path / "params.yaml")
    cwd = Path.cwd()
    os.chdir(tmp_path)
    try:
        generate_demo(loaded.demo.out_dir, loaded.demo.n_images, loaded.demo.seed)
        sample_dataset(loaded.data)
    finally:
        os.chdir(cwd)
    return tmp_path


def extract_eight(workspace: Path, model: str) -> Path:
    """`halp extract` of 8 sampled questions (two parts of 4); returns the model's folder."""
    set_params(workspace, {"data.sample_size": 8})
    halp("sample", cwd=workspace)
    halp("extract", "--model", model, cwd=workspace)
    return workspace / "embeddings" / model


def set_params(folder: Path, changes: dict) -> None:
    """Edit params.yaml in folder: changes are dotted keys, e.g. {"models.qwen2_vl.layers": [1]}."""
    path = folder / "params.yaml"
    params = yaml.safe_load(path.read_text())
    for dotted, value in changes.items():
        node = params
        *parents, leaf = dotted.split(".")
        for key in parents:
            node = node[key]
        node[leaf] = value
    path.write_text(yaml.safe_dump(params))


def copy_repo(dest: Path) -> Path:
    """The repository's tracked files, as a fresh clone would have them."""
    files = subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True, check=True).stdout
    for name in files.splitlines():
        target = dest / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / name, target)
    return dest
