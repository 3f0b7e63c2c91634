"""How long a large dataset takes to reach its first training step, and what the dataset index costs.

Generates a dataset folder of N small photos (default 7,400, the size of the full Oxford-IIIT Pet release),
then times, in one run:
  - the dataset index built once (what catseg does now), against the reference: listing images/ for every
    image lookup, as catseg did before (measured on a sample of lookups and scaled to N);
  - `catseg train --time-budget 10m` (planner included) from the start of fit to the end of its first
    optimisation step: before the cache (index, split, planner), the cache (decoding), and after it.

    python benchmarks/large_dataset.py [--count 7400] [--keep DIR]
"""

from __future__ import annotations

import argparse
import io
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import cpu_flags  # noqa: E402

from catseg.data import DatasetWriter, dataset_json, image_files_by_stem, read_dataset  # noqa: E402


def make_dataset(root: Path, count: int) -> Path:
    rng = np.random.default_rng(0)
    with DatasetWriter(root) as writer:
        for i in range(count):
            image = rng.integers(0, 255, (48, 64, 3), dtype=np.uint8)
            mask = np.zeros((48, 64), np.uint8)
            mask[10:30, 20:40] = 1
            buf = io.BytesIO()
            Image.fromarray(image).save(buf, format="PNG", compress_level=1)
            writer.write_image(f"photo_{i:05d}", buf.getvalue(), ".png")
            writer.write_mask(f"photo_{i:05d}", mask)
        writer.write_dataset_json(dataset_json(["background", "thing"]))
    return root


def time_index(root: Path, count: int) -> tuple[float, float]:
    """Return (seconds for every lookup through one index, reference seconds listing the folder per lookup)."""
    info = read_dataset(root)
    start = time.perf_counter()
    stems = info.stems()
    for stem in stems:
        info.image_path(stem)
    indexed = time.perf_counter() - start
    sample = stems[:: max(1, len(stems) // 40)]
    start = time.perf_counter()
    for stem in sample:
        image_files_by_stem(info.images_dir).get(stem)
    per_lookup = (time.perf_counter() - start) / len(sample)
    # before: stems() listed once, then every image was looked up twice (decode and a size check)
    return indexed, per_lookup * 2 * count


def time_first_step(root: Path, out: Path, budget: str) -> dict[str, float]:
    """Run `catseg train DATASET --time-budget BUDGET` (planner included) up to its first step; return seconds."""
    import catseg.train
    from catseg.config import TrainConfig

    marks: dict[str, float] = {"started": time.perf_counter()}
    real_cache = catseg.train.cache_samples

    def timed_cache(*args: object, **kwargs: object) -> object:
        marks.setdefault("cache_start", time.perf_counter())
        samples = real_cache(*args, **kwargs)
        marks["cache_end"] = time.perf_counter()
        return samples

    def progress(report: object) -> None:
        marks.setdefault("first_step", time.perf_counter())
        raise KeyboardInterrupt  # one step is enough

    catseg.train.cache_samples = timed_cache
    try:
        catseg.train.fit(TrainConfig(dataset=str(root), out=str(out), time_budget=budget).validate(), progress=progress)
    except KeyboardInterrupt:
        pass
    finally:
        catseg.train.cache_samples = real_cache
    return {"before_cache": marks["cache_start"] - marks["started"],
            "cache": marks["cache_end"] - marks["cache_start"],
            "after_cache": marks["first_step"] - marks["cache_end"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=7400)
    parser.add_argument("--keep", type=Path, default=None, help="write the dataset here and keep it")
    parser.add_argument("--time-budget", default="10m", help="the budget given to catseg train (it plans for it)")
    args = parser.parse_args()
    print(f"machine: {cpu_flags()}")
    work = Path(tempfile.mkdtemp(prefix="catseg-large-"))
    try:
        root = args.keep or work / "data"
        if not (root / "dataset.json").is_file():
            start = time.perf_counter()
            make_dataset(root, args.count)
            print(f"generated {args.count} photos (64x48 PNG) in {time.perf_counter() - start:.1f}s")
        indexed, listed = time_index(root, args.count)
        print(f"dataset index, every image looked up once: {indexed:.3f}s (index built once); reference, "
              f"folder listed per lookup (before): {listed:.1f}s; ratio {listed / max(indexed, 1e-9):.0f}x")
        figures = time_first_step(root, work / "run", args.time_budget)
        print(f"catseg train --time-budget {args.time_budget}: {figures['before_cache']:.1f}s index, split and "
              f"planner (step timing), {figures['cache']:.1f}s decoding {args.count} photos into the cache, "
              f"{figures['after_cache']:.1f}s from the cache to the end of the first training step")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
