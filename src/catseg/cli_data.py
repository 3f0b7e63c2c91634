"""The data subcommands of `catseg`: convert, import, check and preview (labelme JSON, existing layouts and
band images -> a dataset folder, and the dataset folder's check). Each parses, then calls ONE library function;
catseg.cli registers them.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

# ----------------------------------------------------------------------------- convert
def add_convert(sub: Any) -> None:
    p = sub.add_parser("convert", help="labelme JSON folder -> dataset folder",
                       description="Turn a folder of labelme JSON files (searched recursively) into a dataset folder.")
    p.add_argument("labelme_dir", type=Path, help="folder with labelme .json files (and their images)")
    p.add_argument("out_dir", type=Path, help="dataset folder to create")
    p.add_argument("--labels", type=Path, default=None,
                   help="labels.txt in labelme's convention (__ignore__, _background_, then classes); "
                        "default: every label found, sorted")
    p.add_argument("--skip-invalid", action="store_true", help="convert the valid files and list the skipped ones")
    p.add_argument("--viz", action="store_true", help="also write overlay images to OUT_DIR/viz/ for checking by eye")
    p.add_argument("--images", type=Path, default=None,
                   help="folder of band images (.npy, .tif) the JSONs were drawn on previews of, paired by stem; "
                        "images/ gets these instead of the previews (see `catseg preview`)")
    p.add_argument("--channel-axis", choices=["first", "last"], default=None,
                   help="with --images: where the bands are when the shape cannot tell")
    p.add_argument("--band-names", default=None, help="with --images: band names for dataset.json, comma-separated "
                                                      "or a text file with one per line")
    p.add_argument("--force", action="store_true", help="replace OUT_DIR if it exists")
    p.set_defaults(handler=_run_convert)


def _run_convert(args: argparse.Namespace) -> int:
    from catseg.labelme import convert_labelme

    report = convert_labelme(args.labelme_dir, args.out_dir, labels_file=args.labels, force=args.force,
                             skip_invalid=args.skip_invalid, viz=args.viz, images=args.images,
                             channel_axis=args.channel_axis, band_names=_band_names(args.band_names))
    print(report.summary())
    return 0


def _band_names(text: str | None) -> list[str] | None:
    from catseg.bands import read_band_names

    return read_band_names(text)


# ----------------------------------------------------------------------------- import
def add_import(sub: Any) -> None:
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
    p.add_argument("--ignore-id", type=int, default=None,
                   help="masks: the mask value that means void / unlabelled (stored as 255, ignored), e.g. 11 for CamVid")
    p.add_argument("--split", action="append", default=[], metavar="NAME=IMAGES_DIR,MASKS_DIR",
                   help="masks: a named split from its own folders (relative to SRC); repeat it, e.g. "
                        "--split train=train,trainannot --split val=val,valannot")
    p.add_argument("--channel-axis", choices=["first", "last"], default=None,
                   help="masks: where the bands are in 3-D band images (.npy, .tif) when their shape cannot tell: "
                        "first (bands, height, width) or last (height, width, bands)")
    p.add_argument("--band-names", default=None,
                   help="masks: band names for dataset.json, comma-separated or a text file with one per line")
    p.add_argument("--download", action="store_true",
                   help="oxford-pets: download the official release into SRC first (checksums verified, resumable)")
    p.add_argument("--force", action="store_true", help="replace OUT_DIR if it exists")
    p.set_defaults(handler=_run_import)


def _run_import(args: argparse.Namespace) -> int:
    from catseg.importers import import_dataset

    report = import_dataset(args.format, args.src, args.out_dir, labels=args.labels, images=args.images,
                            masks=args.masks, colors=args.colors, classes=args.classes,
                            download=args.download, force=args.force, ignore_id=args.ignore_id, splits=args.split,
                            channel_axis=args.channel_axis, band_names=_band_names(args.band_names))
    print(report.summary())
    return 0


# ----------------------------------------------------------------------------- check
def add_check(sub: Any) -> None:
    p = sub.add_parser("check", help="validate a dataset folder and describe it",
                       description="Validate a dataset folder; exit non-zero when it cannot be trained on.")
    p.add_argument("dataset", type=Path)
    p.set_defaults(handler=_run_check)


def _run_check(args: argparse.Namespace) -> int:
    from catseg.check import check_dataset

    report = check_dataset(args.dataset)
    print(report.format())
    return 0 if report.ok else 1


# ----------------------------------------------------------------------------- preview
def add_preview(sub: Any) -> None:
    p = sub.add_parser("preview", help="false-colour PNGs of band images (.npy, .tif) to annotate in labelme",
                       description="Write OUT/<stem>.png showing three bands of each band image as red, green and "
                                   "blue. Annotate the PNGs in labelme, then `catseg convert OUT DATASET --images "
                                   "CUBES` pairs each JSON with its cube.")
    p.add_argument("inputs", nargs="+", help="band images or folders of them")
    p.add_argument("--out", type=Path, required=True, help="folder for the PNGs")
    p.add_argument("--bands", default=None, metavar="R,G,B",
                   help="band indices shown as red, green, blue (from 0; one index = grey); default: long, middle "
                        "and short wavelengths, at 85%%, 50%% and 15%% of the band range")
    p.add_argument("--channel-axis", choices=["first", "last"], default=None,
                   help="where the bands are in 3-D arrays when the shape cannot tell")
    p.add_argument("--force", action="store_true", help="overwrite PNGs already in --out")
    p.set_defaults(handler=_run_preview)


def _run_preview(args: argparse.Namespace) -> int:
    from catseg.preview import parse_bands, write_previews

    written = write_previews(args.inputs, args.out, parse_bands(args.bands), args.channel_axis, args.force)
    print(f"wrote {len(written)} preview(s) to {args.out}")
    return 0
