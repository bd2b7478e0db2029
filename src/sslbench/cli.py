"""The ``sslbench`` command line.

The subcommand is parsed first and ``key=value`` overrides are validated against the
schema before torch is imported, so a typo fails in a fraction of a second with one line
naming the bad value and the valid choices. ``main(argv)`` returns the exit status, so the
command line is tested in-process.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import textwrap
import time
from collections.abc import Sequence

from sslbench import __version__
from sslbench.config import compose, load_run_config
from sslbench.config.overrides import quote_path_override
from sslbench.errors import ConfigError, Requeued, UsageError, one_line
from sslbench.eval.fields import KNN_FIELD
from sslbench.host import limit_spin_waiting
from sslbench.run.folder import RANKS_OF_A_COMMAND
from sslbench.run.preflight import check_run_data

DESCRIPTION = """\
Pretrain, evaluate and compare self-supervised vision models.

commands:
  demo                      the embedded default: SimCLR on Fashion-MNIST vs random init
  pretrain [KEY=VALUE ...]  one run: pretrain, then evaluate the frozen backbone
  pretrain -m KEY=A,B ...   a grid: each combination a run in its own process; completed
                            runs skipped; experiment=study_imagenette: the study (--dry-run)
  eval run_dir=DIR [random_init=true]
                            evaluate a finished run's backbone again; random_init=true:
                            the same backbone untrained (the table's lower bound)
  export run_dir=DIR [format=timm|torchvision|safetensors] [out=FILE.safetensors]
                            its backbone's weights (safetensors) + a JSON that rebuilds it
  datasets [list|prepare NAME]
                            the datasets, and building their decode-once caches
  gallery transform=NAME [method=NAME] [out=views.png] [images=4] [views=6]
                            a PNG grid of a pipeline's views of a few real images
  report DIR... [--format md|csv|html|latex|json] [--out FILE] [--reference study|lightly]
                            method x pipeline tables and plots from any run folders
  bench [KEY=VALUE ...] [steps=20] [warmup=3] [repeats=3] [workers=N]
        [rows=sslbench,lightly,ceiling] [out=FILE.jsonl]
                            images/s of a run's training step: sslbench's data path, lightly's
                            per-image transforms in workers, and compute alone (default:
                            SimCLR, ResNet-18, 32 px, batch 128, Fashion-MNIST)

Override keys: method, transform, pretext, dataset, backbone, experiment, launcher (groups),
epochs, batch_size, image_size, seed, device, devices, run_dir, dataset.max_train,
dataset.max_test, method.KEY, transform.ops.OP.PARAM, pretext.weight, ...; see README.md.
"""


#: Exit status of a run stopped for SLURM to requeue it (sysexits' EX_TEMPFAIL: try again).
EXIT_REQUEUED = 75


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sslbench", description=DESCRIPTION, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--version", action="version", version=f"sslbench {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    demo = sub.add_parser("demo", help="SimCLR on Fashion-MNIST beside a random-init backbone")
    demo.add_argument("overrides", nargs="*", metavar="KEY=VALUE")

    pretrain = sub.add_parser(
        "pretrain", help="one run: pretrain, then evaluate; -m: a grid of runs"
    )
    pretrain.add_argument("--config", metavar="FILE", help="repeat a run from its config.yaml")
    pretrain.add_argument(
        "-m", "--multirun", action="store_true",
        help="a grid: every combination of the comma lists (a,b / range(0,3) / glob(*)) and "
        "an experiment's run list, each run a child process; completed runs are skipped",
    )  # fmt: skip
    pretrain.add_argument(
        "--dry-run",
        action="store_true",
        help="list the runs and their folders (with -m: the device, downloads and expected "
        "time); run nothing",
    )
    pretrain.add_argument("overrides", nargs="*", metavar="KEY=VALUE")

    evaluate = sub.add_parser("eval", help="evaluate a finished run again (run_dir=DIR)")
    evaluate.add_argument("overrides", nargs="*", metavar="KEY=VALUE")

    export = sub.add_parser(
        "export", help="a run's backbone as safetensors + JSON (run_dir=DIR format=timm out=FILE)"
    )
    export.add_argument("overrides", nargs="*", metavar="KEY=VALUE")

    datasets = sub.add_parser("datasets", help="list datasets; prepare NAME builds its cache")
    datasets.add_argument("action", nargs="?", default="list", choices=["list", "prepare"])
    datasets.add_argument("name", nargs="?")
    datasets.add_argument("overrides", nargs="*", metavar="KEY=VALUE")

    gallery = sub.add_parser(
        "gallery", help="a PNG grid of a pipeline's views (out=views.png images=4 views=6)"
    )
    gallery.add_argument("overrides", nargs="*", metavar="KEY=VALUE")

    report = sub.add_parser(
        "report", help="method x pipeline tables and plots from run folders (searched recursively)"
    )
    report.add_argument("dirs", nargs="+", metavar="DIR", help="run folders or folders of them")
    report.add_argument(
        "--format", default="md", choices=["md", "csv", "html", "latex", "json"],
        help="output format (default md)",
    )  # fmt: skip
    report.add_argument("--out", metavar="FILE", help="write here instead of standard output")
    report.add_argument(
        "--reference", choices=["study", "lightly"],
        help="add a published value to each cell, and the difference: the study's linear "
        "top-1, or lightly's Imagenette benchmark's kNN top-1",
    )  # fmt: skip
    bench = sub.add_parser(
        "bench", help="images/s of a run's step: sslbench's data path, lightly's, compute only"
    )
    bench.add_argument("overrides", nargs="*", metavar="KEY=VALUE")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return its exit status."""
    parser = _parser()
    args = parser.parse_args(argv)
    limit_spin_waiting()  # before torch is imported (sslbench.host says why)
    if args.command is None:
        parser.print_help()
        return 2
    try:
        handler = {
            "demo": _demo,
            "pretrain": _pretrain,
            "eval": _eval,
            "export": _export,
            "datasets": _datasets,
            "gallery": _gallery,
            "report": _report,
            "bench": _bench,
        }[args.command]
        return handler(args)
    except (ConfigError, UsageError) as err:
        print(f"sslbench: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as err:  # Ctrl-C: 130; a run stopped by SIGTERM: 143
        print(f"sslbench: interrupted{f': {err}' if str(err) else ''}", file=sys.stderr)
        return getattr(err, "exit_code", 130)
    except Requeued as err:  # SLURM restarts the job; the run resumes from its checkpoint
        print(f"sslbench: requeued: {err}", file=sys.stderr)
        return EXIT_REQUEUED
    except BrokenPipeError:  # `sslbench ... | head`: the reader has what it wanted
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - Python flushes stdout at exit
        return 0
    except Exception as err:  # noqa: BLE001 - one line for the user, details in error.log
        print(f"sslbench: error: {one_line(err)}", file=sys.stderr)
        return 1


def _pretrain(args: argparse.Namespace) -> int:
    if args.multirun:
        if args.config:
            raise UsageError("--config repeats one run; a grid (-m) is composed from KEY=VALUE")
        from sslbench.grid.expand import expand
        from sslbench.grid.launch import run_grid

        return run_grid(expand(args.overrides), dry_run=args.dry_run)
    if args.config:
        cfg = load_run_config(args.config, args.overrides)
    else:
        cfg = compose(args.overrides)
    if cfg.grid.runs or cfg.grid.axes:
        runs = max(1, len(cfg.grid.runs)) * math.prod(map(len, cfg.grid.axes.values()))
        raise UsageError(
            f"this experiment is a grid of {runs} runs; "
            f"run it with sslbench pretrain -m {' '.join(args.overrides)}"
        )
    check_run_data(cfg)  # a bad dataset.path or batch size: said before torch is imported
    if args.dry_run:
        print(f"1 run: {cfg.run_dir}")
        return 0
    from sslbench.run.pretrain import pretrain  # torch is imported only now

    results = pretrain(cfg)
    # rank 0 says it, once: not the other ranks, nor rank 0 of ranks that a command started
    # itself (that command does; sslbench.run.cluster)
    if results and not os.environ.get(RANKS_OF_A_COMMAND):
        print(_summary(results, cfg.run_dir))
    return 0


def _summary(results: dict, run_dir: str, scores: dict | None = None) -> str:
    """What a run (or ``sslbench eval``) computed, every score on its own line, then the
    caveats a reader must see beside them. ``scores``: the numbers just computed (eval), by
    default all of the run's."""
    scores = results if scores is None else scores

    def fmt(value: float | None) -> str:
        return "n/a" if value is None else f"{value:.3f}"

    pretext = results.get("pretext")
    task = "" if not pretext else f" + pretext {pretext}"
    first = []
    if "linear_top1" in scores:
        first.append(f"linear top-1 {fmt(scores['linear_top1'])}, "
                     f"top-5 {fmt(scores.get('linear_top5'))}")  # fmt: skip
    if "knn_top1" in scores:
        first.append(f"kNN top-1 {fmt(scores['knn_top1'])}")
    lines = [f"{results['method']} / {results['transform']}{task} on {results['dataset']}: "
             f"{', '.join(first)}"]  # fmt: skip
    for field in sorted(k for k in scores if KNN_FIELD.fullmatch(k)):
        lines.append(f"  kNN top-1 at {field[len('knn_top1_') :]}: {fmt(scores[field])}")
    if scores.get("linear_top1_1pct") is not None:
        lines.append(f"  few-shot linear probe top-1: 1% of the labels "
                     f"{fmt(scores['linear_top1_1pct'])}, 10% "
                     f"{fmt(scores.get('linear_top1_10pct'))}")  # fmt: skip
    if scores.get("sgd_linear_top1") is not None:
        lines.append(f"  SGD linear probe (eval.probe=sgd) top-1 {fmt(scores['sgd_linear_top1'])}, "
                     f"top-5 {fmt(scores.get('sgd_linear_top5'))}")  # fmt: skip
    if scores.get("finetune_top1") is not None:
        lines.append(f"  fine-tuned top-1 {fmt(scores['finetune_top1'])}, "
                     f"top-5 {fmt(scores.get('finetune_top5'))}")  # fmt: skip
    if scores.get("online_probe_top1") is not None:
        lines.append(f"  online probe top-1 {fmt(scores['online_probe_top1'])}")
    if pretext and scores.get("pretext_accuracy") is not None:
        chance = results.get("pretext_chance")
        level = "" if chance is None else f" (chance {chance:g})"
        lines.append(f"  pretext accuracy {fmt(scores['pretext_accuracy'])}{level}")
    if results.get("pretrain_seconds") is not None and scores is results:
        lines.append(f"  {results['pretrain_seconds'] / 60:.1f} min "
                     f"({results['images_per_second']:.0f} img/s)")  # fmt: skip
    lines += [f"  note: {caveat}" for caveat in results.get("caveats") or []]
    lines.append(f"run folder: {run_dir}")
    return "\n".join(lines)


def _run_dir_arg(overrides: list[str]) -> tuple[str, list[str]]:
    run_dirs = [o.split("=", 1)[1] for o in overrides if o.startswith("run_dir=")]
    if not run_dirs:
        raise UsageError("eval needs run_dir=DIR (a folder with config.yaml and last.ckpt)")
    return run_dirs[-1], [o for o in overrides if not o.startswith("run_dir=")]


#: What ``sslbench eval`` may change: how the frozen backbone is scored and where it runs,
#: never what was trained (method, backbone, transform, ... must match last.ckpt).
EVAL_KEY_PREFIXES = ("eval.", "dataset.max_test", "dataset.path", "device", "threads",
                     "progress_bar", "precision", "num_workers")  # fmt: skip


def _eval(args: argparse.Namespace) -> int:
    from pathlib import Path

    run_dir, overrides = _run_dir_arg(args.overrides)
    own, overrides = _own_args(overrides, {"random_init": "false"}, positive=())
    if own["random_init"] not in ("true", "false"):
        raise UsageError(f"random_init must be true or false, got '{own['random_init']}'")
    config_file = Path(run_dir) / "config.yaml"
    if not config_file.is_file():
        raise UsageError(f"run_dir={run_dir} has no config.yaml; is it a run folder?")
    for override in overrides:
        key = override.split("=", 1)[0]
        if not key.startswith(EVAL_KEY_PREFIXES):
            raise UsageError(
                f"'{override}': eval scores the backbone as it was trained; it takes "
                f"{', '.join(k + '*' if k.endswith('.') else k for k in EVAL_KEY_PREFIXES)}"
            )
    cfg = load_run_config(config_file, [*overrides, quote_path_override(f"run_dir={run_dir}")])
    from sslbench.run.evaluate import evaluate_run, read_checkpoint, update_results
    from sslbench.run.loggers import log_scores_to_run
    from sslbench.run.resume import checkpoint_position

    if own["random_init"] == "true":
        # The lower bound beside the run: its backbone as initialised with the run's seed,
        # scored by the same probes; kept apart from the run's own scores.
        start = time.perf_counter()
        random_init = evaluate_run(run_dir, cfg, random_init=True)
        random_init["eval_seconds"] = time.perf_counter() - start
        update_results(run_dir, {"random_init": random_init})
        print(_random_init_summary(random_init, run_dir))
        return 0
    metrics = evaluate_run(run_dir, cfg)
    results = update_results(run_dir, metrics)
    # the scores reach the run's trackers too, at the step the run ended
    step = checkpoint_position(read_checkpoint(Path(run_dir) / "last.ckpt"))["step"]
    log_scores_to_run(cfg, Path(run_dir), metrics, step)
    print(_summary(results, run_dir, scores=metrics))
    return 0


def _random_init_summary(scores: dict, run_dir: str) -> str:
    return (
        f"random init (the run's backbone untrained, seed as the run's): linear top-1 "
        f"{scores['linear_top1']:.3f}, kNN top-1 {scores['knn_top1']:.3f}; saved as "
        f"random_init in {run_dir}/results.json"
    )


#: Keys of ``sslbench export``, with their defaults (out: D/backbone.safetensors).
EXPORT_KEYS = {"run_dir": "", "format": "timm", "out": ""}


def _export(args: argparse.Namespace) -> int:
    from pathlib import Path

    own, rest = _own_args(args.overrides, EXPORT_KEYS, positive=())
    if rest:  # the run is exported as it was trained: no run overrides
        raise UsageError(
            f"'{rest[0]}': export takes run_dir=DIR, format=timm|torchvision|safetensors "
            "and out=FILE.safetensors"
        )
    if not own["run_dir"]:
        raise UsageError("export needs run_dir=DIR (a folder with config.yaml and last.ckpt)")
    from sslbench.tools.export import export_run  # checks the request before it imports torch

    out = Path(own["out"]).expanduser() if own["out"] else None
    weights, info = export_run(Path(own["run_dir"]).expanduser(), own["format"], out)
    print(f"{weights}\n{info}")
    return 0


def _demo(args: argparse.Namespace) -> int:
    cfg = compose(["experiment=demo", *args.overrides])
    check_run_data(cfg)
    from sslbench.run.evaluate import evaluate_run, update_results
    from sslbench.run.pretrain import pretrain

    print(f"sslbench demo: SimCLR on {cfg.dataset.name}, run folder {cfg.run_dir}", flush=True)
    results = pretrain(cfg)
    start = time.perf_counter()
    random_init = evaluate_run(cfg.run_dir, cfg, random_init=True)
    random_init["eval_seconds"] = time.perf_counter() - start
    update_results(cfg.run_dir, {"random_init": random_init})
    rows = [
        ("random init", random_init["linear_top1"], random_init["knn_top1"], 0.0),
        (
            f"SimCLR, {cfg.epochs} epochs",
            results["linear_top1"],
            results["knn_top1"],
            results["pretrain_seconds"] / 60,
        ),
    ]
    print()
    print(f"{cfg.backbone.name} on {cfg.dataset.name} ({results['train_images']} train / "
          f"{results['test_images']} test images, {cfg.image_size} px)")  # fmt: skip
    print(f"{'backbone':<22}{'linear top-1':>14}{'kNN top-1':>12}{'minutes':>10}")
    for name, linear, knn, minutes in rows:
        print(f"{name:<22}{linear:>14.3f}{knn:>12.3f}{minutes:>10.1f}")
    print(f"\n{textwrap.fill(_demo_sentence(results, random_init), width=90)}")
    print(f"\nrun folder: {cfg.run_dir}")
    return 0


def _demo_sentence(results: dict, random_init: dict) -> str:
    """What the demo's two numbers are, and what pretraining gained, in one sentence."""
    gain_linear = 100 * (results["linear_top1"] - random_init["linear_top1"])
    gain_knn = 100 * (results["knn_top1"] - random_init["knn_top1"])
    return (
        "Linear top-1 is the test accuracy of a logistic-regression classifier trained on the "
        "frozen backbone's features, kNN top-1 that of a vote among the nearest training "
        f"images' features; SimCLR's pretraining changed them by {gain_linear:+.1f} and "
        f"{gain_knn:+.1f} points over the same backbone at random init."
    )


def _datasets(args: argparse.Namespace) -> int:
    from sslbench.data.catalog import CATALOG
    from sslbench.data.listing import catalog_table

    if args.action == "list":
        rows = catalog_table()
        columns = list(rows[0])
        widths = {c: max(len(c), *(len(r[c]) for r in rows)) for c in columns[:-1]}
        print("  ".join(c.ljust(widths.get(c, 0)) for c in columns).rstrip())
        for row in rows:
            print("  ".join(row[c].ljust(widths.get(c, 0)) for c in columns).rstrip())
        return 0
    if not args.name:
        raise UsageError(f"datasets prepare NAME; valid: {', '.join(sorted(CATALOG))}")
    if args.name not in CATALOG:
        raise UsageError(f"unknown dataset '{args.name}'; valid: {', '.join(sorted(CATALOG))}")
    cfg = compose([f"dataset={args.name}", *args.overrides])
    from sslbench.data import get_source, load_or_build, requested_side

    source = get_source(cfg.dataset.name, cfg.dataset.path, cfg.dataset.url)
    side = requested_side(source, cfg.dataset.cache_size, cfg.image_size)
    for split in source.splits():
        cached = load_or_build(
            source, split, side, strict=cfg.dataset.strict, jpeg_draft=cfg.dataset.jpeg_draft
        )
        skipped = len(cached.meta.get("skipped", []))
        note = f", {skipped} unreadable skipped" if skipped else ""
        print(
            f"{cfg.dataset.name}/{split}: {len(cached)} images at {cached.side} px"
            f"{note} in {cached.path}"
        )
    return 0


#: Keys of ``sslbench gallery`` that are not run config keys, with their defaults.
GALLERY_KEYS = {"out": "views.png", "images": "4", "views": "6"}


def _own_args(
    overrides: list[str], defaults: dict[str, str], positive: Sequence[str]
) -> tuple[dict[str, str], list[str]]:
    """Split a command's own keys (``defaults``, with their default values) from the run
    overrides; the keys in ``positive`` must be positive integers."""
    own = dict(defaults)
    rest = []
    for override in overrides:
        key, sep, value = override.partition("=")
        if sep and key in defaults:
            own[key] = value
        else:
            rest.append(override)
    for key in positive:
        try:
            number = int(own[key])
        except ValueError:
            number = 0
        if number < 1:
            raise UsageError(f"{key} must be a positive integer, got '{own[key]}'")
    return own, rest


def _gallery_args(overrides: list[str]) -> tuple[dict[str, str], list[str]]:
    """Split the gallery's own keys (out, images, views) from the run overrides."""
    own, rest = _own_args(overrides, GALLERY_KEYS, positive=("images", "views"))
    if not own["out"].lower().endswith(".png") or own["out"].lower() == ".png":
        raise UsageError(f"out must be a .png file name, got '{own['out']}'")
    return own, rest


def _gallery(args: argparse.Namespace) -> int:
    from pathlib import Path

    own, overrides = _gallery_args(args.overrides)
    cfg = compose(overrides)
    from sslbench.tools.gallery import make_gallery  # torch and matplotlib only now

    out = make_gallery(
        cfg, Path(own["out"]).expanduser(), n_images=int(own["images"]), n_views=int(own["views"])
    )
    print(out)
    return 0


#: Keys of ``sslbench bench`` that are not run config keys, with their defaults.
BENCH_KEYS = {"steps": "20", "warmup": "3", "repeats": "3", "workers": "auto",
              "rows": "sslbench,lightly,ceiling", "out": ""}  # fmt: skip


def bench_overrides(overrides: Sequence[str]) -> list[str]:
    """The benchmark's defaults (batch 128, 32 px, no progress bar) under the user's
    overrides; an experiment brings its own settings, so none are added to one."""
    given = {o.split("=", 1)[0].lstrip("+~") for o in overrides}
    if "experiment" in given:
        return list(overrides)
    defaults = [d for d in ("batch_size=128", "image_size=32") if d.split("=")[0] not in given]
    return [*defaults, "progress_bar=false", *overrides]


def _bench(args: argparse.Namespace) -> int:
    own, overrides = _own_args(args.overrides, BENCH_KEYS, positive=("steps", "warmup", "repeats"))
    if own["workers"] != "auto" and not own["workers"].isdigit():
        raise UsageError(f"workers must be auto or a number >= 0, got '{own['workers']}'")
    cfg = compose(bench_overrides(overrides))
    from sslbench.tools.bench import run_bench, write_json_line  # torch only now
    from sslbench.tools.bench_result import BenchSettings

    try:
        settings = BenchSettings(
            steps=int(own["steps"]), warmup=int(own["warmup"]), repeats=int(own["repeats"]),
            rows=[r.strip() for r in own["rows"].split(",") if r.strip()],
            workers=None if own["workers"] == "auto" else int(own["workers"]),
        )  # fmt: skip
    except ValueError as err:
        raise UsageError(str(err)) from None
    result = run_bench(cfg, settings)
    print(result.render())
    if own["out"]:
        write_json_line(result, own["out"])
    return 0


def _report(args: argparse.Namespace) -> int:
    from sslbench.report import run_report  # matplotlib only now; no torch

    return run_report(args)


if __name__ == "__main__":
    sys.exit(main())
