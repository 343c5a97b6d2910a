"""Data-layer speed and memory on ML-1M: load + filter (ratings >= 3, 5-core), cold-item split, modalities.

Run by hand (never part of the test suite):

    python benchmarks/data_speed.py                  # ML-1M, fetched first into the data root if absent
    python benchmarks/data_speed.py --profile        # plus a cProfile of the timed stages
    python benchmarks/data_speed.py --dataset ml-100k

Target: the timed stages together < 5 s and a peak resident set < 1 GB on 2 cores. Memory is read from
the kernel (VmHWM in /proc/self/status and getrusage ru_maxrss), not tracemalloc, because polars, numpy and
torch allocate outside Python's allocator. The peak is reset before each stage (/proc/self/clear_refs), so
each stage's peak is its own; the process peak includes the libraries' import.
"""

from __future__ import annotations

import argparse
import cProfile
import datetime as dt
import gc
import io
import os
import platform
import pstats
import resource
import shlex
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

from provenance import commit, machine  # benchmarks/provenance.py

TARGET_S = 5.0
TARGET_MB = 1024.0


def _status_mb(field: str) -> float:
    """A memory field of /proc/self/status (VmRSS, VmHWM) in MiB; NaN where /proc is absent."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


def _reset_peak() -> bool:
    """Reset VmHWM to the current RSS (Linux >= 4.0); False where that is not possible."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def _maxrss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def _stage(name: str, func: Callable[[], Any], rows: list[dict[str, Any]], profiler: cProfile.Profile | None) -> Any:
    gc.collect()
    exact = _reset_peak()
    rss0 = _status_mb("VmRSS")
    if profiler is not None:
        profiler.enable()
    t0, c0 = time.perf_counter(), time.process_time()
    result = func()
    seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
    if profiler is not None:
        profiler.disable()
    rows.append({"stage": name, "seconds": seconds, "cpu": cpu, "rss_before": rss0, "peak": _status_mb("VmHWM"),
                 "rss_after": _status_mb("VmRSS"), "exact_peak": exact})
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="ml-1m", help="fetch name or folder of atomic files (default ml-1m)")
    parser.add_argument("--root", help="data root (default $SIBRAR_DATA or ~/.cache/sibrar)")
    parser.add_argument("--protocol", default="cold_item")
    parser.add_argument("--rating-threshold", type=float, default=3.0)
    parser.add_argument("--k-core", type=int, default=5)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--profile", action="store_true", help="cProfile the timed stages and print the top functions")
    parser.add_argument("--profile-top", type=int, default=30)
    args = parser.parse_args(argv)
    warnings.filterwarnings("ignore", message=r"Sparse (CSR tensor support|invariant checks)")

    t_import = time.perf_counter()
    import numpy as np
    import polars as pl
    import torch

    from sibrar.config import DataConfig, SplitConfig
    from sibrar.data.dataset import load_dataset
    from sibrar.data.splits import make_split

    try:  # training-derived modalities (interactions, id) and numeric scaling, where the package has them
        from sibrar.data.inputs import build_inputs
    except ImportError:
        build_inputs = None
    t_import = time.perf_counter() - t_import

    # fetch outside the timed part
    source = args.dataset
    if not Path(source).expanduser().is_dir():
        from sibrar.data.sources import fetch

        t_fetch = time.perf_counter()
        source = str(fetch(args.dataset, args.root))
        t_fetch = time.perf_counter() - t_fetch
    else:
        t_fetch = 0.0
    data_cfg = DataConfig(dataset=source, rating_threshold=args.rating_threshold, k_core=args.k_core)
    split_cfg = SplitConfig(protocol=args.protocol, seed=args.seed)  # type: ignore[arg-type]

    baseline = _status_mb("VmRSS")
    peak_before = max(_status_mb("VmHWM"), _maxrss_mb())  # imports + fetch, before the per-stage resets
    load_before = os.getloadavg() if hasattr(os, "getloadavg") else (float("nan"),) * 3
    profiler = cProfile.Profile() if args.profile else None
    rows: list[dict[str, Any]] = []
    dataset = _stage("load_dataset (read, threshold, dedup, k-core, side modalities)", lambda: load_dataset(data_cfg), rows, profiler)
    split = _stage(f"make_split ({args.protocol})", lambda: make_split(dataset, split_cfg), rows, profiler)
    if build_inputs is not None:
        _stage("build_inputs (interactions + id modalities, scaling)", lambda: build_inputs(dataset, split), rows, profiler)
    load_after = os.getloadavg() if hasattr(os, "getloadavg") else (float("nan"),) * 3

    total, total_cpu = sum(r["seconds"] for r in rows), sum(r["cpu"] for r in rows)
    peak_stages = max(r["peak"] for r in rows) if rows[0]["exact_peak"] else _status_mb("VmHWM")
    peak_process = max(peak_before, peak_stages, _maxrss_mb())
    counts = split.manifest["counts"]

    print("sibrar data-layer benchmark")
    print(f"command : {shlex.join([Path(sys.executable).name, *sys.argv])}")
    print(f"date    : {dt.datetime.now(dt.UTC).isoformat(timespec='seconds')}")
    print(f"machine : {machine()}")
    print(f"load avg: {load_before[0]:.2f} before, {load_after[0]:.2f} after (other processes share the CPUs when > 0)")
    print(f"commit  : {commit()}")
    print(f"versions: python {platform.python_version()}, polars {pl.__version__}, numpy {np.__version__}, "
          f"torch {torch.__version__}, polars threads {pl.thread_pool_size()}")
    print(f"dataset : {dataset.name} from {source}; rating >= {args.rating_threshold}, {args.k_core}-core -> "
          f"{dataset.n_users:,} users, {dataset.n_items:,} items, {dataset.interactions.height:,} interactions")
    print(f"split   : {args.protocol} seed {args.seed}: train {counts['train']:,} / valid {counts['valid']:,} / "
          f"test {counts['test']:,} (dropped {split.manifest['dropped']:,})")
    print(f"untimed : imports {t_import:.2f} s, fetch {t_fetch:.2f} s, RSS after imports {baseline:.0f} MiB")
    if build_inputs is None:
        print("note    : sibrar.data.inputs.build_inputs not found; training-derived modalities not timed")
    print()
    header = ["stage", "wall (s)", "CPU (s)", "RSS before", "peak RSS", "RSS after"]
    widths = [62, 8, 7, 10, 9, 9]
    print("| " + " | ".join(h.ljust(w) if i == 0 else h.rjust(w) for i, (h, w) in enumerate(zip(header, widths))) + " |")
    print("|" + "|".join("-" * (w + 2) if i == 0 else "-" * (w + 1) + ":" for i, w in enumerate(widths)) + "|")

    def line(cells: list[str]) -> None:
        print("| " + " | ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths))) + " |")

    for r in rows:
        line([r["stage"], f"{r['seconds']:.2f}", f"{r['cpu']:.2f}", f"{r['rss_before']:.0f} MiB", f"{r['peak']:.0f} MiB",
              f"{r['rss_after']:.0f} MiB"])
    line(["total (timed stages)", f"{total:.2f}", f"{total_cpu:.2f}", "", f"{peak_stages:.0f} MiB", ""])
    print()
    print(f"process peak RSS: {peak_process:.0f} MiB (max of VmHWM / ru_maxrss over imports, fetch and every stage); "
          f"{peak_process - baseline:+.0f} MiB over the {baseline:.0f} MiB after imports")
    ok_time, ok_mem = total < TARGET_S, peak_process < TARGET_MB
    print(f"target  : wall {total:.2f} s < {TARGET_S:.0f} s: {'PASS' if ok_time else 'MISS'}; "
          f"peak {peak_process:.0f} MiB < {TARGET_MB:.0f} MiB: {'PASS' if ok_mem else 'MISS'}")
    if load_before[0] > 1.0:
        print(f"caution : load average {load_before[0]:.1f} on {os.cpu_count()} CPUs; wall times are inflated, CPU times are not")

    if profiler is not None:
        out = io.StringIO()
        pstats.Stats(profiler, stream=out).sort_stats("cumulative").print_stats(args.profile_top)
        print()
        print(out.getvalue())
    return 0 if ok_time and ok_mem else 1


if __name__ == "__main__":
    sys.exit(main())
