"""The DVC pipeline end to end, in a copy of the repository as a fresh clone has it."""

from __future__ import annotations

import filecmp
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from PIL import Image

from halp.config import NONE_CSV, load_params
from halp.models.synthetic import BUILDERS, build_synthetic
from halp.store import open_bank, open_embeddings, open_vision_tokens
from tests.conftest import REPO, copy_repo, set_params
from tests.extract.test_parallel import assert_same_extraction

pytestmark = pytest.mark.slow
TINY = tuple(BUILDERS)  # every tiny architecture, as the default pipeline has them
ORGANISMS = tuple(load_params(REPO / "params.yaml").organism.subjects)  # the trained ones
MODELS = (*TINY, *ORGANISMS)
# The default pipeline, smaller: 64 questions for every model, organisms trained for a few steps only.
SMALL = {
    "demo.n_images": 48,
    "data.sample_size": 64,
    "organism.recipe.n_images": 40,
    "organism.recipe.steps": 12,
    "organism.recipe.batch_size": 16,
    "organism.recipe.curriculum": [4, 8],
    "organism.recipe.heldout_images": 4,
    "organism.recipe.eval_every": 6,
    **{f"models.{model}.max_samples": None for model in MODELS},
    # so few steps leave every answer wrong: reviewed labels (half of them correct) let every model's
    # probes, figures and plots run, as they do in the full default for the organisms
    "label.overrides": "review.csv",
}
REVIEW = "question_id,label\n" + "".join(f"question_comb_{i},{i % 2}\n" for i in range(400))


def run(*cmd: str, cwd: Path, timeout: int = 900) -> str:
    env = os.environ | {"PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    result = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    output = result.stdout + result.stderr
    assert result.returncode == 0, f"{' '.join(cmd)} failed:\n{output[-6000:]}"
    return output


def fresh_clone(dest: Path, params: dict | None = None) -> Path:
    """A copy of the repository's tracked files in a git repo of its own, params.yaml edited first."""
    root = copy_repo(dest)
    if params:
        set_params(root, params)
        if params.get("label.overrides"):
            (root / params["label.overrides"]).write_text(REVIEW)
    run("git", "init", "-q", cwd=root)
    run("git", "add", "-A", cwd=root)
    run("git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "copy", cwd=root)
    return root


MISSING = ("deleted", "not in cache")  # what a fresh clone lacks by design: outputs not kept in git


def stale_stages(root: Path) -> dict[str, list]:
    """Stages whose code, params, command or committed outputs differ from what dvc.lock records."""
    stale: dict[str, list] = {}
    for stage, changes in json.loads(run("dvc", "status", "--json", cwd=root)).items():
        for change in changes:  # "changed command" and the like, or {"changed deps": {path: state}}
            if isinstance(change, str):
                if change != "always changed":  # the fingerprint stages ask every run, by design
                    stale.setdefault(stage, []).append(change)
                continue
            for kind, paths in change.items():
                if real := {path: state for path, state in paths.items() if state not in MISSING}:
                    stale.setdefault(stage, []).append({kind: real})
    return stale


def test_committed_lock_matches_the_committed_code_params_and_results(tmp_path):
    root = fresh_clone(tmp_path / "halp")
    stale = stale_stages(root)
    assert not stale, f"{stale}: dvc.lock is stale; run `make repro` and commit dvc.lock with its outputs"
    assert json.loads(run("dvc", "status", "--json", "train-demo", cwd=root)) == {}, (
        "the trained organisms travel with the repository: a fresh clone does not retrain them"
    )
    with (root / "data/overrides.csv").open("a") as reviewed:
        reviewed.write("question_comb_1,1\n")
    assert set(stale_stages(root)) == {f"label@{model}" for model in MODELS}, "a reviewed label reaches DVC"
    subprocess.run(["git", "checkout", "data/overrides.csv"], cwd=root, check=True)
    versions = root / "src/halp/versions.py"
    versions.write_text(versions.read_text().replace("EXTRACTION = 1", "EXTRACTION = 2"))
    assert set(stale_stages(root)) == {f"extract@{model}" for model in MODELS}
    versions.write_text(versions.read_text().replace("EXTRACTION = 2", "EXTRACTION = 1"))
    with (root / "src/halp/probe/splits.py").open("a") as code:
        code.write("# an edit\n")
    assert set(stale_stages(root)) == {f"probe@{model}" for model in MODELS}
    with (root / "src/halp/organism/train.py").open("a") as code:
        code.write("# an edit\n")
    assert {f"train-demo@{name}" for name in ORGANISMS} <= set(stale_stages(root))
    subprocess.run(["git", "checkout", "src/halp/organism/train.py"], cwd=root, check=True)
    set_params(root, {"organism.subjects.demo_mllama.learning_rate": 0.001})
    retrained = {s for s in stale_stages(root) if s.startswith("train-demo")}
    assert retrained == {"train-demo@demo_mllama"}, "one organism's own setting retrains that one only"


def test_none_for_each_optional_csv_works_under_dvc(tmp_path):
    """data/none.csv, the documented none, is a path DVC can depend on (null breaks every DVC command)."""
    root = fresh_clone(tmp_path / "halp")
    assert (root / NONE_CSV).is_file(), "a fresh clone has the empty file"
    settings = ("label.overrides", "probe.breakdown", "lens.ground_truth")
    set_params(root, dict.fromkeys(settings, str(NONE_CSV)))
    lens_models = load_params(root / "params.yaml").lens.models
    assert set(stale_stages(root)) == (
        {f"label@{m}" for m in MODELS} | {f"probe@{m}" for m in MODELS} | {f"lens@{m}" for m in lens_models}
    )


@pytest.fixture(scope="module")
def repo(tmp_path_factory) -> Path:
    """A fresh clone after `dvc repro`."""
    root = fresh_clone(tmp_path_factory.mktemp("clone") / "halp", SMALL)
    run("dvc", "repro", cwd=root, timeout=2400)  # every stage of 13 models: 14 min on a 2-core AMD EPYC
    return root


def test_repro_builds_embeddings_and_metrics_for_every_model(repo):
    for model in MODELS:
        emb = open_embeddings(repo / "data/embeddings" / model)
        assert len(emb.meta) == 64 and emb.errors.empty
        blocks = int(emb.attrs["num_layers"])
        assert emb.layers == (list(range(blocks)) if model in ORGANISMS else [0, 2, 3])
        summary = json.loads((repo / "metrics/summary" / f"{model}.json").read_text())
        assert summary["n_samples"] == 64 and set(summary["layers"]) == {str(k) for k in emb.layers}
    shown = json.loads(run("dvc", "metrics", "show", "--json", cwd=repo))[""]["data"]
    trained = {f"metrics/demo/{m}.json" for m in ORGANISMS}
    assert set(shown) == {f"metrics/headline/{m}.json" for m in MODELS} | trained
    detail = json.loads(run("dvc", "metrics", "show", "--json", "metrics/summary/qwen2_5_vl.json", cwd=repo))
    assert detail[""]["data"]["metrics/summary/qwen2_5_vl.json"]["data"]["n_samples"] == 64
    for name in ORGANISMS:
        trained = json.loads((repo / "metrics/demo" / f"{name}.json").read_text())
        assert trained["steps"] == 12 and trained["final_loss"] < 10 and trained["heldout_accuracy"]
    curves = json.loads(run("dvc", "plots", "show", "--json", cwd=repo))  # every plot dvc.yaml declares
    assert "errors" not in curves, curves.get("errors")
    for name in ORGANISMS:  # DVCLive's loss curve, drawn against the step
        (loss,) = curves["data"][f"reports/training/{name}/plots/metrics/train/loss.tsv"]
        assert loss["content"]["encoding"]["x"]["field"] == "step"
        assert [int(point["step"]) for point in loss["content"]["data"]["values"]] == list(range(12))


def test_repro_builds_vision_tokens_a_bank_and_lens_readings_for_the_lens_models(repo):
    lens_models = load_params(repo / "params.yaml").lens.models
    images = pd.read_csv(repo / "data/sampled/samples.csv").image_name.unique()
    for model in lens_models:
        tokens = open_vision_tokens(repo / "data/vision_tokens" / model)
        assert sorted(tokens.meta.image_id) == sorted(images) and tokens.errors.empty
        assert len(tokens.statistics()) == len(images) * len(tokens.layer_names)
        bank = open_bank(repo / "data/banks" / model)
        assert bank.meta.token_string.value_counts().max() <= 20 and bank.meta.sentence.nunique() > 100
        lens = json.loads((repo / "metrics/lens" / f"{model}.json").read_text())
        assert lens["n_images"] == len(images) and set(lens["layers"]) == set(tokens.layer_names)
        assert "LatentLens" in (repo / "reports/lens" / f"{model}.html").read_text()
        if model != "demo_smolvlm":  # its crops are no grid of the demo's cells: nothing to score against
            assert set(lens["accuracy"]) == {"chance", "tokens", "latent", "embedding", "logit"}
            assert set(lens["model_misses"]) == {"latent", "embedding", "logit"}
    assert "reports/vision_tokens" in run("dvc", "plots", "show", "--json", cwd=repo)


def test_repro_labels_probes_and_reports_every_model(repo):
    report = (repo / "reports/report.md").read_text()
    for model in MODELS:
        labels = json.loads((repo / "metrics/labels" / f"{model}.json").read_text())
        assert labels["n_samples"] == 64
        probes = json.loads((repo / "metrics/probes" / f"{model}.json").read_text())
        assert probes["status"] in ("ok", "degenerate")
        assert f"| {model} | 64 " in report
        if probes["status"] == "ok" and model in ORGANISMS:  # the random models: plumbing only
            assert (repo / "reports/figures" / f"{model}.png").is_file()
            assert f"**{model}**: hallucination rate among the answered" in report  # risk-coverage
            assert (repo / "reports/risk_coverage" / f"{model}.csv").is_file()
    assert "reports/figures" in run("dvc", "plots", "show", "--json", cwd=repo)
    assert "## Plumbing: models with random weights" in report
    main, _ = report.split("## Plumbing")
    assert all(f"| {m} | 64 (" in main for m in ORGANISMS) and not any(f"| {m} |" in main for m in TINY)
    assert (repo / "reports/figures/auroc_by_depth.png").is_file() and "auroc_by_depth.png" in main
    for name in load_params(repo / "params.yaml").guard.models:  # guard@NAME ran
        card = json.loads((repo / "models/guards" / name / "guard.json").read_text())
        assert card["model"] == name and (repo / "models/guards" / name / "probe.safetensors").is_file()


def test_repro_under_the_accelerate_launcher_reproduces_the_single_process_embeddings(repo, tmp_path):
    clone = fresh_clone(tmp_path / "halp", SMALL | {"extract.launcher": "accelerate", "extract.processes": 2})
    out = run("dvc", "repro", "extract@qwen2_vl", cwd=clone)
    assert "launching 2 workers" in out and "accelerate.commands.launch" in out
    assert_same_extraction(clone / "data/embeddings/qwen2_vl", repo / "data/embeddings/qwen2_vl")


def ran(out: str) -> list[str]:
    """Stages a dvc command ran, apart from the fingerprints, which run every time (and cost no model)."""
    return [s for s in re.findall(r"Running stage '([^']+)'", out) if not s.startswith("fingerprint@")]


def test_second_repro_does_nothing(repo):
    out = run("dvc", "repro", cwd=repo)
    assert ran(out) == [] and "Running stage 'fingerprint@qwen2_vl'" in out
    assert "Stage 'extract@qwen2_vl' didn't change, skipping" in out


def test_outputs_rebuilt_from_scratch_are_the_ones_dvc_lock_records(repo):
    """A fresh clone's `dvc repro` rebuilds what is not in git: on the same library dispatch it must
    leave dvc.lock (and so `git status`) as it was, and stop at the first stage whose output it matches."""
    lock = (repo / "dvc.lock").read_text()
    shutil.rmtree(repo / "data/embeddings/qwen2_vl")
    shutil.rmtree(repo / "data/banks/qwen2_vl")
    out = run("dvc", "repro", cwd=repo)
    assert sorted(ran(out)) == ["contextual-bank@qwen2_vl", "extract@qwen2_vl"]
    assert (repo / "dvc.lock").read_text() == lock


def test_push_clone_pull_gives_identical_embeddings(repo, tmp_path):
    remote = tmp_path / "remote"
    run("dvc", "remote", "add", "-d", "shared", str(remote), cwd=repo)
    run("dvc", "push", cwd=repo)
    run("git", "add", "-A", cwd=repo)
    run("git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "lock + remote", cwd=repo)
    clone = tmp_path / "colleague"
    run("git", "clone", "-q", str(repo), str(clone), cwd=tmp_path)
    run("dvc", "pull", "extract@qwen2_5_vl", cwd=clone)
    ours, theirs = repo / "data/embeddings/qwen2_5_vl", clone / "data/embeddings/qwen2_5_vl"
    names = sorted(p.name for p in ours.iterdir())
    assert names == sorted(p.name for p in theirs.iterdir())
    assert "part-00000.h5" in names
    _, mismatch, errors = filecmp.cmpfiles(ours, theirs, names, shallow=False)
    assert mismatch == [] and errors == []
    assert not (clone / "data/embeddings/qwen2_vl").exists(), "pulling one model fetches only that model"


def test_exp_run_on_one_models_layers_reruns_only_that_model(repo):
    out = run("dvc", "exp", "run", "--temp", "-S", "models.qwen2_5_vl.layers=[0,-1]", cwd=repo)
    assert "Running stage 'extract@qwen2_5_vl'" in out
    assert "Running stage 'summarize@qwen2_5_vl'" in out
    assert "extract@qwen2_vl'" not in out.replace("Stage 'extract@qwen2_vl' didn't change", "")
    assert "Running stage 'build-tiny'" not in out and "Running stage 'sample'" not in out
    assert "Running stage 'probe@qwen2_5_vl'" in out and "Running stage 'probe@mllama'" not in out
    out = run("dvc", "exp", "run", "--temp", "-S", "probe.workers=1", cwd=repo)
    assert ran(out) == [], "the worker count does not change probe results, so nothing reruns"
    shown = json.loads(run("dvc", "exp", "show", "--json", cwd=repo))
    assert "[0, -1]" in json.dumps(shown) or "[0,-1]" in json.dumps(shown)


def test_exp_show_at_200_columns_shows_the_probe_results_a_layer_experiment_changed(repo):
    best = json.loads((repo / "metrics/headline/qwen2_5_vl.json").read_text())["qwen2_5_vl"]["qt_layer"]
    others = [layer for layer in (0, 2, 3) if layer != best]
    run("dvc", "exp", "run", "--temp", "-n", "no-best", "-S", f"models.qwen2_5_vl.layers={others}", cwd=repo)
    table = run("env", "COLUMNS=200", "dvc", "exp", "show", "--only-changed", "--no-pager", cwd=repo)
    header = next(line for line in table.splitlines() if "Experiment" in line)
    assert "qwen2_5_vl.qt_auroc" in header and "models.qwen2_5_vl.layers" in header, table
    row = next(line for line in table.splitlines() if "[no-best]" in line)
    column = header.index("qwen2_5_vl.qt_layer")
    assert row[column : column + len("qwen2_5_vl.qt_layer")].strip() != str(best), table


def test_a_replaced_image_or_retrained_local_model_reruns_extract(tmp_path):
    """Inputs outside DVC's outputs, as a user's are: a dataset folder and a local model folder."""
    root = fresh_clone(tmp_path / "halp")
    run("halp", "prepare-data", cwd=root)
    shutil.copytree(root / "data/demo", root / "external/demo")
    build_synthetic("qwen2_vl", root / "external", seed=0)
    mine = {"model": "external/qwen2_vl", "layers": [0, -1], "max_new_tokens": 4, "checkpoint_interval": 64}
    set_params(
        root,
        {
            "models": {"mine": mine},  # and no organism to guard or lens (each name must be a model)
            "guard.models": [],
            "lens.models": [],
            "data.source": "external/demo/questions.csv",
            "data.images_dir": "external/demo/images",
        },
    )
    run("dvc", "repro", "extract@mine", cwd=root)

    image = pd.read_csv(root / "data/sampled/samples.csv").image_path[0]
    Image.new("RGB", (64, 64), "purple").save(root / image)
    out = run("dvc", "repro", "extract@mine", cwd=root)
    assert ran(out) == ["sample", "extract@mine"] and "samples' images changed since" in out

    build_synthetic("qwen2_vl", root / "external", seed=1)  # retrained in place: same path, same params
    out = run("dvc", "repro", "extract@mine", cwd=root)
    assert ran(out) == ["extract@mine"] and "extracted with another configuration" in out
