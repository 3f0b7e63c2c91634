"""How well does a model segment a breed it never saw? Leave one breed out of the Oxford-IIIT Pet sample.

    python benchmarks/unseen_breeds.py                          # 2m per training: pretrained and from scratch
    python benchmarks/unseen_breeds.py --budget 10m --series 'default=' --series 'strong=--augment strong'

catseg is judged on photos it has not seen: other breeds, other sources. The sample holds three breeds
(Abyssinian and Bengal cats, American bulldogs), so each can play the unseen one. The real command line
throughout: import the sample with the binary labels (border counted as pet), then for each breed B add
three named splits to dataset.json: `breed-B` (its 100 photos, scored only), `train-no-B` and `val-no-B`
(the other two breeds' 200 photos, a seeded 20% of them for validation). Train with `--train-split
train-no-B --val-split val-no-B --time-budget BUDGET` and the series' flags, then evaluate the run at each
photo's own resolution on `val-no-B` (breeds it trained on) and on `breed-B` (the breed it never saw).
Prints the CPU flags, one line per training, a table of pet IoU (dataset-wide) and a JSON line.
"""

from __future__ import annotations

import argparse
import json
import random
import re
import shlex
import statistics
import tempfile
import time
from pathlib import Path

from active_learning import DEFAULT_DATA, add_splits, catseg, prepare_dataset, stems_of  # benchmarks/
from machine import cpu_flags, parse_series  # benchmarks/machine.py


def breed_of(stem: str) -> str:
    """Return the breed of an Oxford-IIIT Pet photo name (`Abyssinian_12` -> `Abyssinian`)."""
    return stem.rsplit("_", 1)[0]


def leave_one_out(stems: list[str], val_fraction: float = 0.2, seed: int = 1234) -> dict[str, dict[str, list[str]]]:
    """Return {breed: {"breed-B": its stems, "train-no-B": ..., "val-no-B": ...}} for each breed."""
    breeds = sorted({breed_of(s) for s in stems})
    if len(breeds) < 2:
        raise SystemExit(f"{len(breeds)} breed(s) in the dataset: leaving one out needs at least two")
    folds = {}
    for breed in breeds:
        others = sorted(s for s in stems if breed_of(s) != breed)
        random.Random(seed).shuffle(others)
        n_val = max(1, round(val_fraction * len(others)))
        folds[breed] = {f"breed-{breed}": sorted(s for s in stems if breed_of(s) == breed),
                        f"train-no-{breed}": sorted(others[n_val:]), f"val-no-{breed}": sorted(others[:n_val])}
    return folds


def run_name(series: str) -> str:
    """Return a folder name for a series' runs: its letters and digits joined by dashes."""
    return re.sub("[^A-Za-z0-9]+", "-", series).strip("-") or "series"


def pet_iou(dataset: Path, run: Path, split: str) -> tuple[float, float, int]:
    """Evaluate a run on a named split; return (pet IoU dataset-wide, per-image mean, images)."""
    out = run / f"eval-{split}"
    catseg("evaluate", str(run), str(dataset), "--split", split, "--out", str(out), "--force")
    summary = json.loads((out / "summary.json").read_text(encoding="utf-8"))
    pet = summary["classes"][-1]
    return (summary["dataset"]["per_class"][pet]["iou"], summary["per_image"]["per_class"][pet]["iou"],
            summary["num_images"])


def one_fold(dataset: Path, work: Path, breed: str, name: str, flags: list[str], budget: str, seed: int) -> dict:
    run = work / f"{run_name(name)}-no-{breed}"
    started = time.perf_counter()
    catseg("train", str(dataset), "--out", str(run), "--time-budget", budget, "--train-split", f"train-no-{breed}",
           "--val-split", f"val-no-{breed}", "--seed", str(seed), "--force", *flags)
    seconds = time.perf_counter() - started
    seen, seen_img, n_seen = pet_iou(dataset, run, f"val-no-{breed}")
    unseen, unseen_img, n_unseen = pet_iou(dataset, run, f"breed-{breed}")
    config = json.loads((run / "config.json").read_text(encoding="utf-8"))
    row = {"breed": breed, "series": name, "seen": seen, "seen_per_image": seen_img, "seen_images": n_seen,
           "unseen": unseen, "unseen_per_image": unseen_img, "unseen_images": n_unseen,
           "train_seconds": round(seconds, 1), "model": config["model"]["name"],
           "size": config["preprocess"]["size"], "epochs": config["scores"].get("epochs")}
    print(f"  without {breed:16s} {name:22s}: trained breeds {seen:.4f}, {breed} (unseen) {unseen:.4f} "
          f"({row['model']}, {row['size']}px, {row['epochs']} epochs, {seconds:.0f}s)", flush=True)
    return row


def print_table(rows: list[dict], series: list[str]) -> None:
    print(f"{'left out':18s} " + " ".join(f"{s[:24]:>24s}" for s in series))
    print(f"{'':18s} " + " ".join(f"{'trained / unseen':>24s}" for _ in series))
    for breed in sorted({r["breed"] for r in rows}):
        cells = []
        for s in series:
            r = next(r for r in rows if r["breed"] == breed and r["series"] == s)
            cells.append(f"{r['seen']:.3f} / {r['unseen']:.3f}")
        print(f"{breed:18s} " + " ".join(f"{c:>24s}" for c in cells))
    means = []
    for s in series:
        mine = [r for r in rows if r["series"] == s]
        means.append(f"{statistics.mean(r['seen'] for r in mine):.3f} / {statistics.mean(r['unseen'] for r in mine):.3f}")
    print(f"{'mean':18s} " + " ".join(f"{c:>24s}" for c in means))
    print("pet IoU (dataset-wide): on held-out photos of the breeds it trained on / on the breed it never saw")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="the Oxford-IIIT Pet sample (release layout)")
    parser.add_argument("--dataset", type=Path, help="an imported binary pets dataset folder instead of --data")
    parser.add_argument("--budget", default="2m", help="--time-budget of each training")
    parser.add_argument("--series", action="append", metavar="NAME=FLAGS",
                        help="a column: its name and extra `catseg train` flags (repeat it); default: "
                             "'pretrained (default)=' and 'from scratch=--model unet'")
    parser.add_argument("--breeds", help="comma list of breeds to leave out (default: each in turn)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--work", type=Path, help="keep the dataset and runs here (default: a temp folder)")
    args = parser.parse_args()
    series = parse_series(args.series or ["pretrained (default)=", "from scratch=--model unet"])
    folders = [run_name(name) for name in series]
    if len(set(folders)) < len(folders):
        raise SystemExit(f"--series names {list(series)} give the same run folder names {folders}: make them differ in letters or digits")
    print(f"cpu: {cpu_flags()}", flush=True)
    with tempfile.TemporaryDirectory(prefix="catseg-breeds-") as tmp:
        work = args.work or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        dataset = prepare_dataset(args.data, args.dataset, work)
        folds = leave_one_out(stems_of(dataset))
        breeds = args.breeds.split(",") if args.breeds else sorted(folds)
        unknown = sorted(set(breeds) - set(folds))
        if unknown:
            raise SystemExit(f"--breeds {','.join(unknown)}: not in the dataset (it has {', '.join(sorted(folds))})")
        add_splits(dataset, {k: v for b in breeds for k, v in folds[b].items()})
        sizes = {b: {k: len(v) for k, v in folds[b].items()} for b in breeds}
        print(f"{len(folds)} breeds; each training {args.budget}; parts: {sizes}", flush=True)
        rows = [one_fold(dataset, work, b, name, shlex.split(flags), args.budget, args.seed)
                for b in breeds for name, flags in series.items()]
        print_table(rows, list(series))
        print(json.dumps({"cpu": cpu_flags(), "budget": args.budget, "series": series, "rows": rows}))


if __name__ == "__main__":
    main()
