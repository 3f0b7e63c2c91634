"""How many photos do I need? Held-out IoU against the number of labelled photos, from scratch and pretrained.

    python benchmarks/data_size.py                                       # 10..all photos, 2 models, 3 seeds, 2m
    python benchmarks/data_size.py --sizes 10,50,all --seeds 0,1 --budget 5m --plot data_size.png

The real command line throughout. Import the Oxford-IIIT Pet sample with the binary labels, hold out
a fixed `test` part (60 photos, scored at their own resolution), and for each seed shuffle the other
240 once and take its first N photos (so the sets are nested: the 20 contain the 10). Each set is what
a user with N labelled photos has: `catseg train --train-split` with the default recipe and a time
budget, which keeps a seeded 20% of the N photos for validation, the same budget for every N. Two
series by default: `--model unet` (from scratch) and the pretrained `--model smp-unet --encoder
efficientnet-lite0 --encoder-weights imagenet`. Prints the CPU flags first, one line per training, a
table (mean ± sd over seeds of the last class's IoU, `pet`) and a JSON line, and writes a PNG plot.
"""

from __future__ import annotations

import argparse
import json
import random
import shlex
import statistics
import sys
import tempfile
from pathlib import Path

from active_learning import DEFAULT_DATA, add_splits, hold_out, prepare_dataset, stems_of, train_and_score
from machine import cpu_flags, parse_series  # benchmarks/machine.py

DEFAULT_SERIES = ["from scratch=--model unet",
                  "pretrained=--model smp-unet --encoder efficientnet-lite0 --encoder-weights imagenet"]


def subsets(pool: list[str], sizes: list[int], seed: int) -> dict[int, list[str]]:
    """Return {N: the first N photos of the pool shuffled with this seed}: nested sets."""
    shuffled = sorted(pool)
    random.Random(seed).shuffle(shuffled)
    return {n: sorted(shuffled[:n]) for n in sizes}


def plot(results: dict[str, dict[int, list[float]]], path: Path, target: str, budget: str) -> None:
    """Write held-out IoU against the number of photos: per series the mean, the seeds' range and each seed."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.4, 4.0))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    for (name, by_n), marker in zip(results.items(), "os^v"):
        ns = sorted(by_n)
        means = [statistics.mean(by_n[n]) for n in ns]
        line, = ax.plot(ns, means, f"{marker}-", label=name)
        ax.fill_between(ns, [min(by_n[n]) for n in ns], [max(by_n[n]) for n in ns], color=line.get_color(), alpha=0.15)
        for n in ns:
            ax.plot([n] * len(by_n[n]), by_n[n], ".", color=line.get_color(), alpha=0.5)
        ax.annotate(f"{means[-1]:.3f}", (ns[-1], means[-1]), textcoords="offset points", xytext=(4, -12), fontsize=8)
    ax.set_xscale("log")
    ns_all = sorted({n for by_n in results.values() for n in by_n})
    ax.set_xticks(ns_all, [str(n) for n in ns_all])
    ax.minorticks_off()  # the log axis' own 2x10^1-style labels would overprint the photo counts
    ax.set_xlabel("labelled photos (80% trained on, 20% validation)")
    ax.set_ylabel(f"{target} IoU on held-out photos")
    ax.set_title(f"How many photos do I need? ({budget} of training each; band: range over seeds)", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="the Oxford-IIIT Pet sample (release layout)")
    parser.add_argument("--dataset", type=Path, default=None, help="use this catseg dataset folder instead of importing")
    parser.add_argument("--test", type=int, default=60, help="held-out photos scored at the end (default: 60)")
    parser.add_argument("--sizes", default="10,20,50,100,all", help="comma list of photo counts; all = every photo "
                                                                    "outside test (default: 10,20,50,100,all)")
    parser.add_argument("--seeds", default="0,1,2", help="comma list of seeds (default: 0,1,2)")
    parser.add_argument("--budget", default="2m", help="--time-budget of every training (default: 2m)")
    parser.add_argument("--series", action="append", default=None, metavar="NAME=FLAGS",
                        help="a line of the plot: its name and its `catseg train` flags (repeat it); default: "
                             "'from scratch=--model unet' and the pretrained smp-unet with efficientnet-lite0")
    parser.add_argument("--train-args", default="", help="extra `catseg train` flags for every series, quoted")
    parser.add_argument("--plot", type=Path, default=Path("data_size.png"), help="where to write the plot")
    parser.add_argument("--work", type=Path, default=None, help="keep datasets and runs here (default: a temp folder)")
    args = parser.parse_args()
    print(f"cpu: {cpu_flags()}", flush=True)
    work = args.work or Path(tempfile.mkdtemp(prefix="catseg-data-size-"))
    dataset = prepare_dataset(args.data, args.dataset, work)
    parts, pool = hold_out(stems_of(dataset), {"test": args.test})
    sizes = sorted({len(pool) if s.strip() == "all" else int(s) for s in args.sizes.split(",") if s.strip()})
    if sizes[-1] > len(pool) or sizes[0] < 2:
        sys.exit(f"--sizes {args.sizes}: give counts from 2 to {len(pool)} (the photos outside test)")
    seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    series = parse_series(args.series or DEFAULT_SERIES)
    splits = {f"n{n}-s{seed}": stems for seed in seeds for n, stems in subsets(pool, sizes, seed).items()}
    add_splits(dataset, {**parts, **splits})
    print(f"{len(pool)} photos to draw from, {args.test} test; {len(series)} series x {len(sizes)} sizes x "
          f"{len(seeds)} seeds = {len(series) * len(sizes) * len(seeds)} trainings of {args.budget}",
          file=sys.stderr, flush=True)
    results: dict[str, dict[int, list[float]]] = {}
    rows = []
    for i, (name, flags) in enumerate(series.items()):
        results[name] = {}
        for n in sizes:
            for seed in seeds:
                r = train_and_score(dataset, work / f"series{i}" / f"n{n}-s{seed}", f"n{n}-s{seed}", args.budget, seed,
                                    shlex.split(flags) + shlex.split(args.train_args), val_split=None)
                results[name].setdefault(n, []).append(r["iou"])
                rows.append({"series": name, "photos": n, **r})
                print(f"  {name}: {n} photos, seed {seed}: {r['class']} IoU {r['iou']:.4f} "
                      f"(per image {r['iou_per_image']:.4f}), trained {r['train_seconds']:.0f}s",
                      file=sys.stderr, flush=True)
    target = rows[0]["class"]
    print(f"{'photos':>6s} " + " ".join(f"{name:>24s}" for name in series))
    for n in sizes:
        cells = []
        for name in series:
            values = results[name][n]
            sd = statistics.stdev(values) if len(values) > 1 else 0.0
            cells.append(f"{statistics.mean(values):.4f} ± {sd:.4f}")
        print(f"{n:6d} " + " ".join(f"{c:>24s}" for c in cells))
    print(f"{target} IoU (dataset-wide) on {rows[0]['test_images']} held-out photos, mean ± sd over {len(seeds)} "
          f"seeds; {args.budget} per training; plot {args.plot}; work folder {work}")
    plot(results, args.plot, target, args.budget)
    print(json.dumps({"cpu": cpu_flags(), "args": {k: str(v) for k, v in vars(args).items()}, "rows": rows}))


if __name__ == "__main__":
    main()
