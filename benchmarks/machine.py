"""What every benchmark shares: the CPU facts it prints first (figures from a machine without bf16 are not
comparable), and its `--series NAME=FLAGS` columns."""

from __future__ import annotations

import os
from pathlib import Path


def cpu_flags() -> str:
    """Return the CPU model and the flags that decide CPU speed here (bf16 autocast needs avx512_bf16 or AMX)."""
    text = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    model = next((line.split(":", 1)[1].strip() for line in text.splitlines() if line.startswith("model name")), "?")
    flags = next((line.split(":", 1)[1].split() for line in text.splitlines() if line.startswith("flags")), [])
    wanted = [f for f in ("avx2", "fma", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile", "avx512_vnni") if f in flags]
    return f"{model}; {os.cpu_count()} cores; flags: {' '.join(wanted) or 'none of avx2/avx512/amx'}"


def parse_series(specs: list[str]) -> dict[str, str]:
    """Return {name: extra `catseg train` flags} from `--series NAME=FLAGS` values, in order.

    A value without `=` or a name given twice is refused: either would silently lose a column.
    """
    series: dict[str, str] = {}
    for spec in specs:
        name, sep, flags = spec.partition("=")
        if not sep or not name.strip():
            raise SystemExit(f"--series {spec!r}: write NAME=FLAGS, e.g. 'strong=--augment strong' ('default=' for none)")
        if name in series:
            raise SystemExit(f"--series {spec!r}: the name {name!r} is given twice; give each column its own name")
        series[name] = flags
    return series
