"""Does `catseg suggest` pick better photos to label than chance? Active learning on the Oxford-IIIT Pet sample,
or on CamVid's street scenes.

    python benchmarks/active_learning.py                                  # 3 seeds, 20 + 20 photos, 2m each
    python benchmarks/active_learning.py --seeds 0,1,2,3,4 --initial 20 --add 20 --budget 2m --pick uncertain
    python benchmarks/active_learning.py --camvid                         # CamVid, class-mean IoU

The real command line throughout. Import the sample with the binary labels (`catseg import oxford-pets
SRC DS --labels binary`), then hold out two fixed parts, the same for every seed: `test` (60 photos,
scored at their own resolution, never trained or selected on) and `val` (20 photos, what training picks
its best epoch, threshold and clean-up on; a person labels those too). Per seed: draw `--initial`
labelled photos from the rest and train on them (`--train-split`, `--val-split val`, `--time-budget`);
rank the remaining unlabelled photos with `catseg suggest` and add its top K, or add K random ones;
train again from scratch with the same budget and seed on each enlarged set (the ground-truth mask
plays the person who corrects the pre-annotation); score the three runs on `test`. Prints the CPU
flags first, then one line per training, a table (IoU of the last class, `pet`) and a JSON line.

`--camvid` asks the same of a pool as uneven as the pets are alike: CamVid (../shared/data/camvid), 11
classes, where some frames hold bicyclists or pedestrians and many hold none. It imports CamVid with its own
splits and void id 11; the test part is CamVid's whole `val` part (101 frames of a sequence no training frame
comes from), `val` (20 frames) and the pool are drawn from its `train` part, and the score is the class-mean
IoU over the 11 classes (void ignored), since a pick that finds the rare classes should show there.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import random
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from machine import cpu_flags  # benchmarks/machine.py

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "oxford-pets-sample"
CAMVID_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "camvid"
CAMVID_CLASSES = "Sky,Building,Pole,Road,Pavement,Tree,SignSymbol,Fence,Car,Pedestrian,Bicyclist"


def catseg(*args: str) -> str:
    """Run `python -m catseg.cli -q ARGS` and return its output; stop with its error when it fails."""
    proc = subprocess.run([sys.executable, "-m", "catseg.cli", "-q", *args], capture_output=True, text=True,
                          check=False)
    if proc.returncode != 0:
        sys.exit(f"catseg {' '.join(args)} failed:\n{proc.stderr[-3000:]}")
    return proc.stdout


def prepare_dataset(data: Path, dataset: Path | None, work: Path, camvid: bool = False) -> Path:
    """Return a dataset folder: the one given, or the Oxford sample (CamVid) imported into work once."""
    if dataset is not None:
        return dataset
    if camvid:
        data = CAMVID_DATA if data == DEFAULT_DATA else data
        if not (data / "train").is_dir():
            sys.exit(f"{data}: no CamVid here (see ../shared/data/README.md); pass --data")
        out = work / "camvid"
        if not (out / "dataset.json").is_file():
            catseg("import", "masks", str(data), str(out), "--split", "train=train,trainannot",
                   "--split", "val=val,valannot", "--classes", CAMVID_CLASSES, "--ignore-id", "11")
            doc = read_doc(out)  # CamVid's val sequence becomes the test part; a val part is drawn from train
            add_splits(out, {"test": doc["splits"]["val"], "camvid-train": doc["splits"]["train"]})
        return out
    if not data.is_dir():
        sys.exit(f"{data}: the Oxford-IIIT Pet sample is not there; pass --data or --dataset")
    out = work / "pets"
    if not (out / "dataset.json").is_file():
        catseg("import", "oxford-pets", str(data), str(out), "--labels", "binary")
    return out


def read_doc(dataset: Path) -> dict:
    return json.loads((dataset / "dataset.json").read_text(encoding="utf-8"))


def stems_of(dataset: Path) -> list[str]:
    """Return the labelled stems outside an official `test` split (which this benchmark never uses); for
    CamVid, the stems of its train part."""
    splits = read_doc(dataset).get("splits", {})
    if "camvid-train" in splits:
        return sorted(splits["camvid-train"])
    masks = {p.stem for p in (dataset / "masks").glob("*.png")}
    images = {p.stem for p in (dataset / "images").iterdir() if p.is_file()}
    return sorted((masks & images) - set(splits.get("test", [])))


def add_splits(dataset: Path, splits: dict[str, list[str]]) -> None:
    """Add named splits to dataset.json (atomically), keeping the others."""
    doc = read_doc(dataset)
    doc.setdefault("splits", {}).update({k: sorted(v) for k, v in splits.items()})
    tmp = dataset / ".dataset.json.tmp"
    tmp.write_text(json.dumps(doc, indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, dataset / "dataset.json")


def hold_out(stems: list[str], sizes: dict[str, int], seed: int = 1234) -> tuple[dict[str, list[str]], list[str]]:
    """Return ({part: stems} of the given sizes, the rest), drawn once with a fixed seed."""
    shuffled = sorted(stems)
    random.Random(seed).shuffle(shuffled)
    if sum(sizes.values()) >= len(shuffled):
        sys.exit(f"{len(shuffled)} photos: not enough for held-out parts of {sizes}")
    parts, start = {}, 0
    for name, n in sizes.items():
        parts[name] = sorted(shuffled[start:start + n])
        start += n
    return parts, sorted(shuffled[start:])


def train_and_score(dataset: Path, run: Path, split: str, budget: str, seed: int, train_args: list[str],
                    val_split: str | None = "val") -> dict:
    """Train on a named split with a time budget, evaluate on `test`; return the scores."""
    started = time.perf_counter()
    catseg("train", str(dataset), "--out", str(run), "--time-budget", budget, "--train-split", split,
           *(["--val-split", val_split] if val_split else []), "--seed", str(seed), "--force", *train_args)
    seconds = time.perf_counter() - started
    catseg("evaluate", str(run), str(dataset), "--split", "test", "--out", str(run / "eval-test"), "--force")
    summary = json.loads((run / "eval-test" / "summary.json").read_text())
    if len(summary["classes"]) > 2:  # many classes: the class-mean IoU, which rare classes move
        target, iou, per_image = "class-mean", summary["dataset"]["miou"], summary["per_image"]["miou"]
    else:
        target = summary["classes"][-1]
        iou = summary["dataset"]["per_class"][target]["iou"]
        per_image = summary["per_image"]["per_class"][target]["iou"]
    return {"split": split, "seed": seed, "iou": iou, "iou_per_image": per_image, "miou": summary["dataset"]["miou"],
            "per_class": {c: v["iou"] for c, v in summary["dataset"]["per_class"].items()},
            "class": target, "train_seconds": round(seconds, 1), "test_images": summary["num_images"]}


def unlabelled_folder(dataset: Path, stems: list[str], folder: Path) -> Path:
    """Return a folder holding (links to) the photos of `stems`, as a person's folder of unlabelled photos."""
    folder.mkdir(parents=True, exist_ok=True)
    images = {p.stem: p for p in (dataset / "images").iterdir() if p.is_file()}
    for stem in stems:
        link = folder / images[stem].name
        if not link.exists():
            try:
                link.symlink_to(images[stem].resolve())
            except OSError:  # no symlinks here (Windows without the right): copy
                link.write_bytes(images[stem].read_bytes())
    return folder


def suggested(run: Path, folder: Path, k: int, score: str, pick: str, out: Path) -> list[str]:
    """Return the stems of the k photos `catseg suggest` ranks first."""
    catseg("suggest", str(run), str(folder), "--top", str(k), "--out", str(out), "--score", score, "--pick", pick,
           "--force")
    with (out / "suggestions.csv").open(newline="", encoding="utf-8") as f:
        rows = sorted(csv.DictReader(f), key=lambda r: int(r["rank"]))
    return [Path(r["path"]).stem for r in rows[:k]]


def one_seed(dataset: Path, work: Path, pool: list[str], seed: int, args: argparse.Namespace,
             train_args: list[str]) -> dict:
    rng = random.Random(seed)
    labelled = sorted(rng.sample(pool, args.initial))
    unlabelled = sorted(set(pool) - set(labelled))
    add_splits(dataset, {f"s{seed}-initial": labelled})
    base = work / f"seed{seed}"
    results = {"initial": train_and_score(dataset, base / "run-initial", f"s{seed}-initial", args.budget, seed,
                                          train_args)}
    _log(seed, "initial", results["initial"])
    picked = suggested(base / "run-initial", unlabelled_folder(dataset, unlabelled, base / "unlabelled"), args.add,
                       args.score, args.pick, base / "suggestions")
    chance = sorted(rng.sample(unlabelled, args.add))
    add_splits(dataset, {f"s{seed}-suggest": labelled + picked, f"s{seed}-random": labelled + chance})
    for arm in ("suggest", "random"):
        results[arm] = train_and_score(dataset, base / f"run-{arm}", f"s{seed}-{arm}", args.budget, seed, train_args)
        _log(seed, arm, results[arm])
    results["picked"], results["random_picked"] = picked, chance
    return results


def _log(seed: int, arm: str, r: dict) -> None:
    print(f"  seed {seed} {arm:8s}: {r['class']} IoU {r['iou']:.4f} (per image {r['iou_per_image']:.4f}), "
          f"trained {r['train_seconds']:.0f}s", file=sys.stderr, flush=True)


def _mean_sd(values: list[float]) -> str:
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.4f} ± {sd:.4f}"


def print_table(rows: dict[int, dict], args: argparse.Namespace) -> None:
    n0, k = args.initial, args.add
    head = f"{'seed':>4s} {f'{n0} labelled':>12s} {f'+{k} suggest':>12s} {f'+{k} random':>12s} {'suggest-random':>15s}"
    print(head)
    for seed, r in rows.items():
        gain = r["suggest"]["iou"] - r["random"]["iou"]
        print(f"{seed:4d} {r['initial']['iou']:12.4f} {r['suggest']['iou']:12.4f} {r['random']['iou']:12.4f} {gain:+15.4f}")
    cols = {arm: [r[arm]["iou"] for r in rows.values()] for arm in ("initial", "suggest", "random")}
    gains = [s - r for s, r in zip(cols["suggest"], cols["random"])]
    print(f"{'mean':>4s} {_mean_sd(cols['initial']):>12s} {_mean_sd(cols['suggest']):>12s} "
          f"{_mean_sd(cols['random']):>12s} {_mean_sd(gains):>15s}")
    first = next(iter(rows.values()))["initial"]
    print(f"{first['class']} IoU (dataset-wide) on {first['test_images']} held-out photos; score {args.score}, "
          f"pick {args.pick}, "
          f"budget {args.budget} per training; suggest beat random in "
          f"{sum(g > 0 for g in gains)} of {len(gains)} seeds")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="the Oxford-IIIT Pet sample (release layout)")
    parser.add_argument("--dataset", type=Path, default=None, help="use this catseg dataset folder instead of importing")
    parser.add_argument("--camvid", action="store_true",
                        help="CamVid instead of the pets: its val sequence is the test part, class-mean IoU the score")
    parser.add_argument("--test", type=int, default=60, help="held-out photos scored at the end (default: 60)")
    parser.add_argument("--val", type=int, default=20, help="labelled validation photos for training (default: 20)")
    parser.add_argument("--initial", type=int, default=20, help="photos labelled at the start (default: 20)")
    parser.add_argument("--add", type=int, default=20, help="photos added by suggest or at random (default: 20)")
    parser.add_argument("--budget", default="2m", help="--time-budget of every training (default: 2m)")
    parser.add_argument("--seeds", default="0,1,2", help="comma list of seeds (default: 0,1,2)")
    parser.add_argument("--score", default="mirror", choices=["mirror", "entropy", "margin"], help="suggest --score")
    parser.add_argument("--pick", default="diverse", choices=["diverse", "uncertain", "typical"], help="suggest --pick")
    parser.add_argument("--train-args", default="", help="extra `catseg train` flags for every training, quoted")
    parser.add_argument("--work", type=Path, default=None, help="keep datasets and runs here (default: a temp folder)")
    args = parser.parse_args()
    print(f"cpu: {cpu_flags()}", flush=True)
    work = args.work or Path(tempfile.mkdtemp(prefix="catseg-active-"))
    dataset = prepare_dataset(args.data, args.dataset, work, args.camvid)
    if args.camvid:  # the test part is CamVid's own val sequence, set at import
        parts, pool = hold_out(stems_of(dataset), {"val": args.val})
        args.test = len(read_doc(dataset)["splits"]["test"])
    else:
        parts, pool = hold_out(stems_of(dataset), {"test": args.test, "val": args.val})
    if args.initial + args.add > len(pool):
        sys.exit(f"{len(pool)} photos outside test and val: too few for --initial {args.initial} + --add {args.add}")
    add_splits(dataset, parts)
    seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    print(f"{len(pool)} photos to draw from; {args.test} test, {args.val} val; {len(seeds)} seeds x 3 trainings of "
          f"{args.budget}", file=sys.stderr, flush=True)
    rows = {seed: one_seed(dataset, work, pool, seed, args, shlex.split(args.train_args)) for seed in seeds}
    print_table(rows, args)
    print(f"work folder {work}")
    print(json.dumps({"cpu": cpu_flags(), "args": {k: str(v) for k, v in vars(args).items()}, "seeds": rows}))


if __name__ == "__main__":
    main()
