"""``quantus-roar``: run the ROAR / KAR / sanity-check benchmark and report on it.

Also available as ``python -m quantus_roar``.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Any

__all__ = ["main"]


def _csv(value: str) -> tuple[str, ...]:
    return tuple(v.strip() for v in value.split(",") if v.strip())


def _percentages(value: str) -> tuple[float, ...]:
    try:
        return tuple(float(v) for v in _csv(value))
    except ValueError as err:
        raise argparse.ArgumentTypeError(
            f"--percentages takes numbers separated by commas, such as 10,30,50. Got {value!r}."
        ) from err


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="quantus-roar", allow_abbrev=False,
        description="ROAR, KAR, no-retrain deletion and sanity checks of attribution methods.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser(
        "run", help="run (or resume) a benchmark into an output folder", allow_abbrev=False,
        description="Run the benchmark grid (estimators x metrics x percentages x seeds). With "
                    "no arguments: digits, SmallCNN, every estimator, all six metrics, 5 "
                    "percentages, 5 retrains, into ./roar-results. Finished cells are stored "
                    "as they complete; running the same command again resumes.")
    _add_grid_flags(run)
    _add_recipe_flags(run)
    _add_run_flags(run)
    report = sub.add_parser("report", help="rebuild report.md, results.csv and figures from "
                                           "the stored results, without computing anything",
                            allow_abbrev=False)
    report.add_argument("out", type=Path, help="output folder of a run")
    return parser


def _add_grid_flags(run: argparse.ArgumentParser) -> None:
    """What the run computes: data, model, estimators, metrics, percentages, retrains."""
    run.add_argument("--config", type=Path, help="TOML file with a [run] table of settings; "
                     "flags given on the command line override it")
    run.add_argument("--dataset", help="digits | synthetic | mnist:ROOT | cifar10:ROOT | "
                     "imagefolder:ROOT (local files, never downloaded)")
    run.add_argument("--model", help="smallcnn | smallresnet | package.module:factory (a "
                     "callable taking in_channels, n_classes and image_size keywords). "
                     "package.module:factory imports that module and runs its code, like any "
                     "Python import: name only your own code (python -m puts the current "
                     "folder first on the import path)")
    run.add_argument("--estimators", type=_csv, help="comma-separated names of "
                     "quantus_roar.ESTIMATORS, FixedPrior(<estimator>) controls and "
                     "package.module:function specs of your own explain functions (Quantus' "
                     "signature; imported like --model) (default: every built-in and "
                     "FixedPrior(Gradient_SmoothGradSquared))")
    run.add_argument("--metrics", type=_csv, help="comma-separated: roar,kar,roar-noretrain,"
                     "kar-noretrain,pixel-flipping,mask-leakage,model-randomisation,"
                     "data-randomisation "
                     "(default: all)")
    run.add_argument("--imputers", type=_csv, help="a sweep over fills, e.g. "
                     "channel_mean,zero,noisy_linear: every ROAR, KAR and deletion cell once "
                     "per fill, and the report compares the rankings (default: the one "
                     "imputer of the config, channel_mean)")
    run.add_argument("--percentages", type=_percentages, help="e.g. 10,30,50,70,90")
    run.add_argument("--retrains", type=int, help="retrains per percentage (default 5)")
    run.add_argument("--epochs", type=int, help="training epochs of every retrain")
    run.add_argument("--leakage-retrains", type=int, dest="leakage_retrains",
                     help="retrains per mask-leakage cell (default: min(retrains, 2))")
    run.add_argument("--model-seeds", type=int, dest="model_seeds",
                     help="repeat the whole pipeline over this many explained models (new "
                          "model, attributions and retrains on the same data; default 1)")


# The training recipe (quantus_roar.TorchRetrainer's settings): flag, its type or its
# choices, and its help (None: none); the setting is the flag's name with underscores.
_RECIPE_FLAGS: tuple[tuple[str, Any, str | None], ...] = (
    ("--batch-size", int, None),
    ("--lr", float, "(peak) learning rate"),
    ("--optimizer", ("adam", "sgd"), None),
    ("--weight-decay", float, None),
    ("--momentum", float, "SGD momentum"),
    ("--schedule", ("onecycle", "cosine", "step", "none"), None),
    ("--label-smoothing", float, None),
    ("--validation-split", float, "share of each training set held out to pick the best epoch"),
    ("--augment", None, "package.module:function called as augment(x_batch, generator) on "
                        "every mini-batch (imported code)"),
)


def _add_recipe_flags(run: argparse.ArgumentParser) -> None:
    recipe = run.add_argument_group(
        "training recipe", "of every model the run trains (quantus_roar.TorchRetrainer); "
        "unset: its default")
    for flag, kind, help_ in _RECIPE_FLAGS:
        choices = kind if isinstance(kind, tuple) else None
        recipe.add_argument(flag, type=None if choices else kind, choices=choices, help=help_)


def _add_run_flags(run: argparse.ArgumentParser) -> None:
    """How the run computes (target, device, seed, memory, executor) and where it writes."""
    run.add_argument("--target", choices=("predicted", "label"),
                     help="class each attribution explains: the model's prediction (default, "
                          "as Hooker et al.) or the true label (lets a test mask encode its "
                          "label)")
    run.add_argument("--device", help="cpu | cuda | cuda:N (default: cuda when available)")
    run.add_argument("--seed", type=int, help="the run's seed (default 0)")
    run.add_argument("--model-seed", type=int, dest="model_seed",
                     help="the seed of everything trained (default: --seed, which alone "
                          "loads and splits the data)")
    run.add_argument("--stream", action="store_true", default=None,
                     help="keep inputs and attributions in memory-mapped files and retrain "
                          "through a DataLoader (for data larger than memory)")
    run.add_argument("--image-size", type=int, dest="image_size",
                     help="imagefolder: resize images to this size")
    run.add_argument("--executor", choices=("processes", "local", "ray"), default="processes",
                     help="where retraining runs: worker processes of one thread each "
                          "(default), this process, or a Ray cluster (pip install "
                          "'quantus-roar[ray]'); the numbers are the same on each")
    run.add_argument("--workers", type=int, help="worker processes of --executor processes "
                     "(default: the usable cores)")
    run.add_argument("--ray-address", dest="ray_address",
                     help="address of a running Ray cluster, e.g. 127.0.0.1:6379 (default with "
                          "--executor ray: start a local one)")
    run.add_argument("--out", type=Path, default=Path("roar-results"),
                     help="output folder (default ./roar-results): new, empty, or one a run "
                          "created; locked while a run works in it")
    run.add_argument("--quick", action="store_true",
                     help="a small run (4 estimators, 3 percentages, 2 retrains): about 30 s "
                          "on two CPU cores")
    run.add_argument("--fresh", action="store_true",
                     help="delete the folder's stored results, caches and report (only files "
                          "runs write) and start anew")
    run.add_argument("--verbose", "-v", action="store_true",
                     help="one line per finished cell: its key, values and compute time")
    run.add_argument("--no-progress", action="store_true", dest="no_progress",
                     help="hide progress bars")


_FLAGS = ("dataset", "model", "estimators", "metrics", "percentages", "retrains", "epochs",
          "target", "device", "seed", "stream", "image_size", "batch_size", "lr", "optimizer",
          "weight_decay", "momentum", "schedule", "label_smoothing", "validation_split",
          "augment", "imputers", "leakage_retrains", "model_seeds", "model_seed")


def _config(args: argparse.Namespace) -> Any:
    from quantus_roar.benchmark.config import RunConfig

    overrides = {k: getattr(args, k) for k in _FLAGS if getattr(args, k) is not None}
    if args.config is not None:
        return RunConfig.from_toml(args.config, quick=args.quick, **overrides)
    return RunConfig.quick(**overrides) if args.quick else RunConfig(**overrides)


_INTERRUPTED = ("quantus-roar: interrupted; finished cells are stored, run the same command "
                "again to resume.")


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the process exit status.

    0: done; 1: some retraining failed on every retry (a rerun computes it);
    2: bad input (settings, data, model, output folder, store, Ray address),
    reported in one line; 130: interrupted. Other exceptions are bugs and
    propagate with their traceback.
    """
    args = _parser().parse_args(argv)
    try:
        # The package's own messages (per-cell lines with --verbose, warnings, errors) to
        # stderr, whatever logging the host process set up.
        log = logging.getLogger("quantus_roar")
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(message)s"))
        log.addHandler(handler)
        log.setLevel(logging.INFO if getattr(args, "verbose", False) else logging.WARNING)
        log.propagate = False
        try:
            return _main(args)
        finally:
            log.removeHandler(handler)
            log.propagate = True
            log.setLevel(logging.NOTSET)
    except KeyboardInterrupt:
        print(_INTERRUPTED, file=sys.stderr)
        return 130


def _input_errors() -> tuple[type[BaseException], ...]:
    """Errors that report bad input (settings, data, folder, store, cluster), not bugs."""
    from quantus_roar.benchmark.config import SettingTypeError
    from quantus_roar.benchmark.datasets import DatasetError
    from quantus_roar.benchmark.store import ConfigMismatchError
    from quantus_roar.exceptions import StorageError

    return (ConfigMismatchError, DatasetError, StorageError, FileNotFoundError, ImportError,
            ValueError, SettingTypeError, ConnectionError)


def _message(err: BaseException) -> str:
    if isinstance(err, OSError) and err.strerror and err.filename is None:
        return err.strerror  # StorageError(errno, message): the message without "[Errno N]"
    return str(err) or type(err).__name__


def _main(args: argparse.Namespace) -> int:
    try:
        return _command(args)
    except Exception as err:
        if not isinstance(err, _input_errors()):
            raise
        print(f"quantus-roar: error: {_message(err)}", file=sys.stderr)
        return 2


def _command(args: argparse.Namespace) -> int:
    if args.command == "report":
        from quantus_roar.benchmark.report import build_report

        path = build_report(args.out)
        print(f"report: {path}")
        return 0
    if args.ray_address is not None and args.executor != "ray":
        raise ValueError("--ray-address needs --executor ray.")
    if args.workers is not None and args.executor != "processes":
        raise ValueError(f"--workers sets the worker processes of --executor processes; "
                         f"the executor here is {args.executor}. Leave --workers out.")
    config = _config(args)
    from quantus_roar.benchmark.runner import run
    from quantus_roar.retrain import keep_freed_memory

    keep_freed_memory()  # CPU training reuses freed blocks (see retrain.allocator)
    from quantus_roar.executors import ProcessExecutor

    # --executor processes without --workers: the runner's default (worker processes,
    # except for a GPU retrainer); with --workers: exactly that many.
    executor = (None if args.executor == "processes" and args.workers is None else
                ProcessExecutor(args.workers) if args.executor == "processes" else
                args.executor)
    try:
        summary = run(config, args.out, fresh=args.fresh, progress=not args.no_progress,
                      executor=executor, ray_address=args.ray_address)
    finally:
        if executor is not None and not isinstance(executor, str):
            executor.close()
    print(f"{len(summary.computed)} cells computed, {summary.skipped} already stored, "
          f"{summary.wall_s:.1f} s, report {summary.report_s:.1f} s. "
          f"Report: {args.out / 'report.md'}")
    if summary.failed:
        for metric, estimator, error in summary.failed:
            print(f"quantus-roar: {metric} {estimator} failed on every retry: {error}",
                  file=sys.stderr)
        print("quantus-roar: run the same command again to compute the missing cells.",
              file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
