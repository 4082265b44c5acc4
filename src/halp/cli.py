"""`halp`: one console entry, one subcommand per pipeline stage; each reads its section of params.yaml."""

from __future__ import annotations

import argparse
import logging
import os
import subprocess
import sys
from pathlib import Path

from halp.config import DEFAULT_PARAMS, ConfigError, Params, load_params
from halp.data.schema import DatasetError
from halp.numerics import use_portable_numerics
from halp.store.lock import FolderBusy
from halp.store.parts import PartWriteError

log = logging.getLogger("halp")
# The commands that keep each finished part (the guard: each row written) and go on from there when run
# again; the others write their outputs when they finish and start over.
RESUMES = ("extract", "contextual-bank", "vision-tokens", "lens", "guard")


def _prepare_data(params: Params, args: argparse.Namespace) -> None:
    from halp.data.demo import generate_demo

    generate_demo(params.demo.out_dir, params.demo.n_images, params.demo.seed)


def _build_tiny(params: Params, args: argparse.Namespace) -> None:
    from halp.models.synthetic import build_synthetic

    out_dir = args.out or (params.tiny.out_dir if args.size == "tiny" else Path("models/full"))
    for arch in args.arch or params.tiny.archs:
        build_synthetic(arch, out_dir, params.tiny.seed, size=args.size)


def _train_demo(params: Params, args: argparse.Namespace) -> None:
    from halp.organism.train import train_organism

    for name in args.name or params.organism.subjects:
        train_organism(name, params.organism)


def _sample(params: Params, args: argparse.Namespace) -> None:
    from halp.data.sample import sample_dataset

    sample_dataset(params.data)


# Each starts N local workers that learn RANK/WORLD_SIZE/LOCAL_RANK from the environment. accelerate's
# --multi_gpu is its name for "N processes under torch.distributed.run" and works on CPUs too (gloo).
LAUNCHERS = {
    "torchrun": ["torch.distributed.run", "--standalone", "--nproc_per_node={n}"],
    "accelerate": [
        "accelerate.commands.launch", "--multi_gpu", "--num_processes={n}", "--num_machines=1",
        "--mixed_precision=no", "--dynamo_backend=no",
    ],
}  # fmt: skip


def _extract(params: Params, args: argparse.Namespace) -> None:
    from halp.extract.run import ExtractionRun, extract
    from halp.store.lock import HELD, writing

    settings = params.extract
    if settings.launcher != "none" and settings.processes > 1 and "WORLD_SIZE" not in os.environ:
        params.model(args.model)
        launcher = [part.format(n=settings.processes) for part in LAUNCHERS[settings.launcher]]
        command = [sys.executable, "-m", *launcher, "-m", "halp", "--params", str(args.params)]
        log.info("launching %d workers: %s", settings.processes, " ".join(command))
        folder = ExtractionRun.folder_for(params, args.model)
        with writing(folder, args.wait):  # held here for the workers, which are told so
            env = os.environ | {HELD: str(folder.resolve())}
            forwarded = ["--remove-damaged"] if args.remove_damaged else []
            subprocess.run([*command, "extract", "--model", args.model, *forwarded], check=True, env=env)
        return
    extract(params, args.model, args.wait, args.remove_damaged)


def _fingerprint(params: Params, args: argparse.Namespace) -> None:
    from halp.models.fingerprint import write_fingerprint

    settings = params.model(args.model)
    out = params.extract.fingerprint_dir / f"{args.model}.json"
    log.info("fingerprint -> %s", write_fingerprint(settings.model, settings.revision, out))


def _label(params: Params, args: argparse.Namespace) -> None:
    from halp.label.run import label_model

    label_model(params, args.model, args.allow_incomplete)


def _prepare_corpus(params: Params, args: argparse.Namespace) -> None:
    from halp.data.corpus import write_demo_corpus

    write_demo_corpus(params.corpus.out, params.corpus.sentences, params.corpus.seed)


def _contextual_bank(params: Params, args: argparse.Namespace) -> None:
    from halp.lens.bank import build_bank

    log.info("bank -> %s", build_bank(params, args.model, args.wait, args.remove_damaged))


def _lens(params: Params, args: argparse.Namespace) -> None:
    from halp.lens.lens_run import lens

    log.info("lens -> %s", lens(params, args.model, args.wait, args.remove_damaged))


def _vision_tokens(params: Params, args: argparse.Namespace) -> None:
    from halp.lens.run import vision_tokens

    log.info("vision tokens -> %s", vision_tokens(params, args.model, args.wait, args.remove_damaged))


def _probe(params: Params, args: argparse.Namespace) -> None:
    from halp.probe.run import probe_model

    log.info("probes -> %s", probe_model(params, args.model, args.control, args.allow_incomplete))


def _guard_fit(params: Params, args: argparse.Namespace) -> None:
    from halp.guard.fit import fit_guard

    log.info("guard -> %s", fit_guard(params, args.model, args.allow_incomplete))


def _guard(params: Params, args: argparse.Namespace) -> None:
    from halp.guard.run import assess_csv, assess_question, load_guard, read_questions, run_settings
    from halp.store.lock import writing

    if (args.csv is None) == (args.image is None):
        raise ConfigError("halp guard takes either --image IMG --question TEXT, or --csv FILE --out FILE")
    if args.image is not None and args.question is None:
        raise ConfigError("--image needs --question TEXT")
    if args.csv is not None and args.out is None:
        raise ConfigError("--csv needs --out FILE (a rerun resumes it)")
    questions = None if args.csv is None else read_questions(params, args.csv, args.out, args.batch_size)
    guard = load_guard(params, args.model, args.coverage)
    if questions is None:
        print(assess_question(guard, args.image, args.question, args.abstain))
        return
    settings = run_settings(guard, args.coverage, args.abstain)
    with writing(args.out, args.wait):  # one writer per output, as per part folder
        assessed, failed = assess_csv(guard, questions, args.out, settings, args.batch_size)
    log.info("guard -> %s (%d rows assessed, %d with an error)", args.out, assessed, failed)
    if assessed and failed == assessed:
        raise ValueError(
            f"none of the {assessed} rows could be assessed: {args.out} holds each row's error. Fix them "
            "(e.g. data.images_dir) and run the same command again: it tries those rows again"
        )


def _report(params: Params, args: argparse.Namespace) -> None:
    from halp.report.probes import write_report

    tiny = params.tiny.out_dir.resolve()
    random_weights = [
        name for name, m in params.models.items() if Path(m.model).resolve().is_relative_to(tiny)
    ]
    write_report(
        list(params.models),
        random_weights,
        params.probe.out_dir,
        params.summary.out_dir,
        params.report.out_dir,
    )


def _summarize(params: Params, args: argparse.Namespace) -> None:
    from halp.report.summary import write_summary
    from halp.store import open_finished

    params.model(args.model)
    emb = open_finished(params.extract.out_dir / args.model, args.allow_incomplete)
    out = write_summary(emb, params.summary.out_dir / f"{args.model}.json")
    log.info("summary -> %s", out)


def _export(params: Params, args: argparse.Namespace) -> None:
    from halp.store import open_finished
    from halp.store.export import export_per_question

    params.model(args.model)
    out = args.out or Path("data/export") / f"{args.model}.h5"
    export_per_question(open_finished(params.extract.out_dir / args.model, args.allow_incomplete), out)
    log.info("per-question export -> %s", out)


def _modules(params: Params, args: argparse.Namespace) -> None:
    from halp.models.modules import matching, model_modules, patterns

    modules = model_modules(params.model(args.model))
    if args.match:
        for glob, names in matching(modules, args.match, args.model).items():
            print(f"{glob}: {len(names)} modules")
            print("\n".join(f"  {name}  ({modules[name]})" for name in names))
        return
    for pattern, count, kinds in patterns(modules):
        print(f"{pattern}  ({count} x {kinds})" if count > 1 else f"{pattern}  ({kinds})")


def _bench(params: Params, args: argparse.Namespace) -> None:
    from halp.bench import benchmark

    benchmark(params, args.model, n_samples=args.n, batch_size=args.batch_size)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="halp", description=__doc__)
    parser.add_argument(
        "--params", type=Path, default=DEFAULT_PARAMS, help="params file (default: params.yaml)"
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logs and full tracebacks")
    commands = parser.add_subparsers(dest="command", required=True)

    def command(name: str, handler, help: str) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=help)
        sub.set_defaults(handler=handler)
        return sub

    command("prepare-data", _prepare_data, "generate the demo dataset (params: demo)")
    build = command(
        "build-tiny", _build_tiny, "build random-init models of the real architectures (params: tiny)"
    )
    build.add_argument(
        "--size", choices=["tiny", "full"], default="tiny", help="full: the real checkpoints' sizes"
    )
    build.add_argument("--arch", action="append", help="only this architecture (repeatable)")
    build.add_argument("--out", type=Path, help="output folder (default: tiny.out_dir, or models/full)")
    train = command(
        "train-demo", _train_demo, "train the demo organisms on the demo world (params: organism)"
    )
    train.add_argument("--name", action="append", help="only this organism (repeatable; a key of subjects)")
    command("report", _report, "probe table and AUROC-by-layer plots for every model (params: report)")
    command("sample", _sample, "validate the dataset CSV and draw the sample (params: data)")
    readers = {}  # the stages that build on a finished extraction
    for name, handler, text in (
        ("fingerprint", _fingerprint, "write what identifies one model's weights (a DVC dependency)"),
        ("extract", _extract, "extract representations and answers for one model"),
        ("summarize", _summarize, "write metrics/summary/<model>.json"),
        ("label", _label, "judge every extracted answer: hallucinated or not (params: label)"),
    ):
        readers[name] = command(name, handler, text)
        readers[name].add_argument("--model", required=True, help="a key of params.yaml's models")
    command("prepare-corpus", _prepare_corpus, "write the demo's text corpus for the bank (params: corpus)")
    bank = command(
        "contextual-bank",
        _contextual_bank,
        "the corpus through the model's LM: the lens's bank (params: lens)",
    )
    bank.add_argument("--model", required=True)
    lens = command(
        "lens", _lens, "LatentLens, EmbeddingLens and LogitLens on every image token (params: lens)"
    )
    lens.add_argument("--model", required=True)
    tokens = command(
        "vision-tokens", _vision_tokens, "every image token at every layer, with statistics (params: lens)"
    )
    tokens.add_argument("--model", required=True)
    probe = command("probe", _probe, "train probes per (representation, layer) (params: probe)")
    probe.add_argument("--model", required=True)
    probe.add_argument(
        "--control", choices=["shuffled"], help="shuffled: permute training labels (sanity check)"
    )
    guard_fit = command(
        "guard-fit", _guard_fit, "fit and save the probe `halp guard` uses before the answer (params: guard)"
    )
    guard_fit.add_argument("--model", required=True)
    guard = command(
        "guard",
        _guard,
        "each question's risk of a hallucinated answer, before the answer (what to expect on kinds of "
        "question the guard never saw: guard.json's unseen_kinds_of_question)",
    )
    guard.add_argument("--model", required=True)
    guard.add_argument("--image", type=Path, help="one image (with --question)")
    guard.add_argument("--question")
    guard.add_argument("--csv", type=Path, help="a CSV in HALP's schema (images under data.images_dir)")
    guard.add_argument(
        "--out", type=Path, help="the CSV's results: question_id, risk, flagged, answer, error"
    )
    guard.add_argument("--coverage", type=float, default=0.8, help="the saved threshold to flag at")
    guard.add_argument("--abstain", action="store_true", help="flagged questions get no answer (one prefill)")
    guard.add_argument("--batch-size", type=int, default=8)
    for sub in (readers["extract"], bank, lens, tokens, guard):
        sub.add_argument(
            "--wait", action="store_true", help="if another run writes the same folder, start after it"
        )
        sub.add_argument(
            "--remove-damaged",
            action="store_true",
            help="remove parts that cannot be read (cut short by a full disk or a bad copy); their samples "
            "run again",
        )
    export = command("export", _export, "export embeddings in another layout")
    export.add_argument("--model", required=True)
    export.add_argument("--layout", choices=["per-question"], default="per-question")
    export.add_argument("--out", type=Path, help="output file (default: data/export/<model>.h5)")
    modules = command(
        "modules",
        _modules,
        "the model's module names (block numbers as *), from its config alone: no weights are loaded",
    )
    modules.add_argument("--model", required=True)
    modules.add_argument("--match", action="append", help="only the modules this glob names (repeatable)")
    bench = command("bench", _bench, "seed-style loop vs the engine on the same samples and model")
    bench.add_argument("--model", required=True)
    bench.add_argument("--n", type=int, default=32, help="samples to time")
    bench.add_argument("--batch-size", type=int, default=8)
    for sub in (readers["summarize"], readers["label"], probe, guard_fit, export):
        sub.add_argument(
            "--allow-incomplete",
            action="store_true",
            help="read an extraction that has not finished (no manifest), with a warning",
        )
    return parser


def main(argv: list[str] | None = None) -> int:
    use_portable_numerics()  # before any subcommand imports torch
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    try:
        args.handler(load_params(args.params), args)
    except KeyboardInterrupt:
        kept = (
            "Finished work is kept (every complete part; for guard --csv every row written): run the same "
            "command again to go on from there."
            if args.command in RESUMES
            else "An unfinished run of this command keeps nothing: run the same command again to start over."
        )
        print(f"halp {args.command}: interrupted. {kept}", file=sys.stderr)
        return 130
    except subprocess.CalledProcessError as err:
        print(f"halp {args.command}: error: a worker failed ({err})", file=sys.stderr)
        return 1
    except (
        ConfigError,
        DatasetError,
        FileNotFoundError,
        ValueError,
        KeyError,
        OverflowError,
        PartWriteError,
        ConnectionError,
        FolderBusy,
    ) as err:
        if args.verbose:
            raise
        print(f"halp {args.command}: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
