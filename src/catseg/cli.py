"""The `catseg` command: each subcommand parses its arguments, then calls ONE library function.

Library code never prints; this module turns results into text and a CatsegError into one clear
message and exit status 2 (a traceback means a bug).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import logging
import sys
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from catseg import __version__
from catseg.config import TrainConfig
from catseg.errors import CatsegError

Handler = Callable[[argparse.Namespace], int]


# ----------------------------------------------------------------------------- convert
def _add_convert(sub: Any) -> None:
    p = sub.add_parser("convert", help="labelme JSON folder -> dataset folder",
                       description="Turn a folder of labelme JSON files (searched recursively) into a dataset folder.")
    p.add_argument("labelme_dir", type=Path, help="folder with labelme .json files (and their images)")
    p.add_argument("out_dir", type=Path, help="dataset folder to create")
    p.add_argument("--labels", type=Path, default=None,
                   help="labels.txt in labelme's convention (__ignore__, _background_, then classes); "
                        "default: every label found, sorted")
    p.add_argument("--skip-invalid", action="store_true", help="convert the valid files and list the skipped ones")
    p.add_argument("--viz", action="store_true", help="also write overlay images to OUT_DIR/viz/ for checking by eye")
    p.add_argument("--force", action="store_true", help="replace OUT_DIR if it exists")
    p.set_defaults(handler=_run_convert)


def _run_convert(args: argparse.Namespace) -> int:
    from catseg.labelme import convert_labelme

    report = convert_labelme(args.labelme_dir, args.out_dir, labels_file=args.labels, force=args.force,
                             skip_invalid=args.skip_invalid, viz=args.viz)
    print(report.summary())
    return 0


# ----------------------------------------------------------------------------- import
def _add_import(sub: Any) -> None:
    p = sub.add_parser("import", help="existing layout (oxford-pets, voc, masks) -> dataset folder",
                       description="Import a dataset in an existing layout into a catseg dataset folder.")
    p.add_argument("format", choices=["oxford-pets", "voc", "masks"], help="layout of SRC")
    p.add_argument("src", type=Path, help="folder in that layout (with --download: where the release is stored)")
    p.add_argument("out_dir", type=Path, help="dataset folder to create")
    p.add_argument("--labels", default="binary",
                   help="oxford-pets: binary (border = pet), binary-ignore-border, species, trimap")
    p.add_argument("--images", default="images", help="masks: images subfolder of SRC")
    p.add_argument("--masks", default="masks", help="masks: masks subfolder of SRC")
    p.add_argument("--colors", type=Path, default=None,
                   help="masks: file mapping RGB colours to class names, one 'name r g b' per line")
    p.add_argument("--classes", default=None, help="masks, voc: comma-separated class names for class-id masks (id order)")
    p.add_argument("--download", action="store_true",
                   help="oxford-pets: download the official release into SRC first (checksums verified, resumable)")
    p.add_argument("--force", action="store_true", help="replace OUT_DIR if it exists")
    p.set_defaults(handler=_run_import)


def _run_import(args: argparse.Namespace) -> int:
    from catseg.importers import import_dataset

    report = import_dataset(args.format, args.src, args.out_dir, labels=args.labels, images=args.images,
                            masks=args.masks, colors=args.colors, classes=args.classes,
                            download=args.download, force=args.force)
    print(report.summary())
    return 0


# ----------------------------------------------------------------------------- check
def _add_check(sub: Any) -> None:
    p = sub.add_parser("check", help="validate a dataset folder and describe it",
                       description="Validate a dataset folder; exit non-zero when it cannot be trained on.")
    p.add_argument("dataset", type=Path)
    p.set_defaults(handler=_run_check)


def _run_check(args: argparse.Namespace) -> int:
    from catseg.check import check_dataset

    report = check_dataset(args.dataset)
    print(report.format())
    return 0 if report.ok else 1


# ----------------------------------------------------------------------------- models
def _add_models(sub: Any) -> None:
    p = sub.add_parser("models", help="list the model names `train --model` accepts")
    p.set_defaults(handler=_run_models)


def _run_models(args: argparse.Namespace) -> int:
    from catseg.models import describe_models

    for name, text in describe_models().items():
        print(f"{name:22s} {text}")
    return 0


# ----------------------------------------------------------------------------- train
@contextlib.contextmanager
def _progress_bar() -> Iterator[Callable[[Any], None] | None]:
    """Yield a per-step callback drawing one tqdm bar per epoch, or None when stderr is not a terminal
    (logs then get one line per epoch from the library)."""
    if not sys.stderr.isatty():
        yield None
        return
    from tqdm.auto import tqdm

    state: dict[str, Any] = {"bar": None, "epoch": None}

    def update(report: Any) -> None:
        if state["bar"] is None or state["epoch"] != report.epoch:
            if state["bar"] is not None:
                state["bar"].close()
            state["bar"] = tqdm(total=report.steps_per_epoch, desc=f"epoch {report.epoch}", leave=False, unit="step")
            state["epoch"] = report.epoch
        state["bar"].set_postfix(loss=f"{report.loss:.3f}", img_s=f"{report.images_per_s:.1f}", lr=f"{report.lr:.2e}")
        state["bar"].update(1)
        if report.step >= report.steps_per_epoch:  # close before the library logs the epoch's line
            state["bar"].close()
            state["bar"], state["epoch"] = None, None

    try:
        yield update
    finally:
        if state["bar"] is not None:
            state["bar"].close()



def _add_dataclass_flags(p: argparse.ArgumentParser, cls: type) -> None:
    """Add one flag per dataclass field, so the CLI and the config can never drift apart."""
    for f in dataclasses.fields(cls):
        help_text = f.metadata.get("help", "")
        if f.metadata.get("cli") is False:
            continue
        if f.metadata.get("positional"):
            p.add_argument(f.name, help=help_text)
            continue
        flag = "--" + f.name.replace("_", "-")
        # SUPPRESS leaves unset flags out of the namespace, so the config knows which ones the user gave.
        if isinstance(f.default, bool):
            p.add_argument(flag, action="store_true", default=argparse.SUPPRESS, help=help_text)
        else:
            p.add_argument(flag, type=type(f.default), default=argparse.SUPPRESS,
                           required=bool(f.metadata.get("required")),
                           help=f"{help_text} (default: {f.default!r})" if f.default != "" else help_text)


def _add_train(sub: Any) -> None:
    p = sub.add_parser("train", help="train a model on a dataset folder -> run folder",
                       description="Train a segmentation model; writes a self-describing run folder.")
    _add_dataclass_flags(p, TrainConfig)
    p.set_defaults(handler=_run_train)


def _run_train(args: argparse.Namespace) -> int:
    from catseg.train import fit

    fields = [f for f in dataclasses.fields(TrainConfig) if f.metadata.get("cli") is not False]
    given = [f.name for f in fields if hasattr(args, f.name) and f.name not in ("dataset", "out")]
    config = TrainConfig(**{f.name: getattr(args, f.name) for f in fields if hasattr(args, f.name)}, given=given)
    with _progress_bar() as bar:
        result = fit(config.validate(), progress=bar)
    print(result.summary())
    return 0


def _add_tta_flags(p: argparse.ArgumentParser) -> None:
    group = p.add_mutually_exclusive_group()
    group.add_argument("--tta", dest="tta", action="store_true", default=None,
                       help="test-time augmentation: also predict the mirrored photo and average (about 2x slower); "
                            "default: as training chose on validation (config.json \"tta\")")
    group.add_argument("--no-tta", dest="tta", action="store_false", help="never mirror, whatever training chose")
    p.add_argument("--tta-scales", default="1", help="comma list of size factors to average over, e.g. 0.75,1,1.25")


def _scales(text: str) -> list[float]:
    try:
        return [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise CatsegError(f"--tta-scales {text!r}: give numbers such as 0.75,1,1.25") from None


# ----------------------------------------------------------------------------- evaluate
def _add_evaluate(sub: Any) -> None:
    p = sub.add_parser("evaluate", help="score a run on a dataset at original resolution",
                       description="Predict every image at its own size and score it against its mask.")
    p.add_argument("run", type=Path, help="run folder written by `catseg train`")
    p.add_argument("dataset", type=Path, help="dataset folder")
    p.add_argument("--split", default="", help="named split of dataset.json (default: the run's validation "
                                                "images when DATASET is the training dataset, else all)")
    p.add_argument("--out", type=Path, default=None, help="folder for summary.json and per_image.csv "
                                                          "(default: RUN/eval-<dataset>-<split>)")
    p.add_argument("--threshold", type=float, default=None, help="two classes: override the stored threshold")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    _add_tta_flags(p)
    p.add_argument("--force", action="store_true", help="replace an existing --out folder")
    p.set_defaults(handler=_run_evaluate)


def _run_evaluate(args: argparse.Namespace) -> int:
    from catseg.evaluate import evaluate, format_summary

    summary = evaluate(args.run, args.dataset, split=args.split or None, out_dir=args.out,
                       threshold=args.threshold, device=args.device, force=args.force, tta=args.tta,
                       tta_scales=_scales(args.tta_scales))
    print(format_summary(summary))
    return 0


# ----------------------------------------------------------------------------- predict
def _add_predict(sub: Any) -> None:
    p = sub.add_parser("predict", help="masks for new photos, at each photo's own size",
                       description="Predict masks for image files, folders or glob patterns.")
    p.add_argument("run", type=Path, help="run folder written by `catseg train`")
    p.add_argument("inputs", nargs="+", help="image files, folders or globs (quote globs)")
    p.add_argument("--out", type=Path, required=True, help="output folder")
    p.add_argument("--format", dest="formats", default="mask",
                   help="comma list of: mask (palette PNG of class ids), overlay (photo + coloured mask), "
                        "prob (16-bit PNG per class), npy (float32 probabilities)")
    p.add_argument("--threshold", type=float, default=None, help="two classes: foreground probability cut-off "
                                                                  "(default: the one chosen on validation)")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--batch-size", type=int, default=4, help="photos per forward pass")
    _add_tta_flags(p)
    p.add_argument("--force", action="store_true", help="overwrite existing output files")
    p.set_defaults(handler=_run_predict)


def _run_predict(args: argparse.Namespace) -> int:
    from catseg.predict import predict_files

    formats = [f.strip() for f in args.formats.split(",") if f.strip()]
    written = predict_files(args.run, args.inputs, args.out, formats=formats, threshold=args.threshold,
                            device=args.device, batch_size=args.batch_size, force=args.force, tta=args.tta,
                            tta_scales=_scales(args.tta_scales))
    print(f"wrote {len(written)} files to {args.out}")
    return 0


# ----------------------------------------------------------------------------- demo
def _add_demo(sub: Any) -> None:
    p = sub.add_parser("demo", help="the whole job on generated data: labelme JSON -> train -> evaluate -> predict",
                       description="Generate a small labelme-annotated dataset, convert it, train about a minute "
                                   "on CPU, evaluate and predict. Needs no data and no internet.")
    p.add_argument("--out", type=Path, default=Path("catseg-demo"), help="folder for everything the demo writes")
    p.add_argument("--time-budget", default="60s", help="training time (default: 60s)")
    p.add_argument("--force", action="store_true", help="replace the --out folder if it exists")
    p.set_defaults(handler=_run_demo)


def _run_demo(args: argparse.Namespace) -> int:
    from catseg.demo import run_demo

    with _progress_bar() as bar:
        report = run_demo(args.out, time_budget=args.time_budget, force=args.force, progress=bar)
    print(report.summary())
    return 0


# ----------------------------------------------------------------------------- main
_ADDERS = (_add_demo, _add_convert, _add_import, _add_check, _add_train, _add_evaluate, _add_predict, _add_models)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="catseg", description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--version", action="version", version=f"catseg {__version__}")
    parser.add_argument("-q", "--quiet", action="store_true", help="only warnings and errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for add in _ADDERS:
        add(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "handler", None):
        parser.print_help()
        return 2
    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO, format="%(message)s",
                        stream=sys.stderr)
    try:
        return int(args.handler(args))
    except CatsegError as exc:
        print(f"catseg {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"catseg {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
