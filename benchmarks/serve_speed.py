"""Load test of `sibrar serve` on loopback: requests/s and p50/p99 latency at 1 and 8 concurrent clients.

Run by hand, e.g. ``python benchmarks/serve_speed.py`` (ML-1M, then a generated 1M-item catalogue) or
``--quick``. Bounded: each scenario stops after ``--requests`` requests or ``--duration`` seconds,
whichever comes first, and talks to 127.0.0.1 only. Scenarios: a known user's top-10
(GET /users/{id}/recommendations), a new user's top-10 from 5 liked items (POST /recommendations)
and item adds from side information (POST /items). The server is a child process (`sibrar serve`
with uvicorn, one worker); the clients are threads with keep-alive connections in this process,
so both share the machine's cores: on 2 cores the client's own CPU time is part of every figure.

The run: ``--run DIR``, else a small SiBraR (item tower: interactions, genres, year; d=64; 1 epoch)
trained on ML-1M once into ``--work``. The 1M-item catalogue is that run plus generated movies
(random genres and years, labelled SYNTHETIC), persisted as one added-items event next to a copy of
the run, so the server embeds them with the trained tower at start-up and indexes all items with
the index `sibrar index` would choose for that size (IVF fast-scan PQ).
"""

from __future__ import annotations

import argparse
import datetime as dt
import http.client
import itertools
import json
import os
import shlex
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from provenance import REPO, commit, machine  # benchmarks/provenance.py

from sibrar.serve.store import ItemStore

TARGET_P99_MS, TARGET_RPS = 20.0, 500.0
RUN_CONFIG = {
    "data": {"dataset": "ml-1m", "item_modalities": {"genres": {"column": "genres"}, "year": {"column": "release_year"}}},
    "split": {"protocol": "cold_item", "seed": 42},
    "model": {"name": "sibrar", "dim": 64,
              "item": {"modalities": ["interactions", "genres", "year"], "common_dim": 64, "branch": {"hidden": [64]}}},
    "train": {"epochs": 1, "batch_size": 4096, "n_negatives": 3, "seed": 0},
    "eval": {"ks": [10]},
}


def ensure_run(work: Path) -> Path:
    """The benchmark's ML-1M run folder, trained on first use."""
    import yaml

    run = work / "run"
    if (run / "model.pt").is_file():
        return run
    work.mkdir(parents=True, exist_ok=True)
    (work / "run.yaml").write_text(yaml.safe_dump(RUN_CONFIG), encoding="utf-8")
    print(f"training the benchmark run into {run} (once)", flush=True)
    subprocess.run([sys.executable, "-m", "sibrar.cli", "train", str(work / "run.yaml"), "--out", str(run),
                    "--no-progress"], check=True, cwd=REPO)
    return run


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Server:
    """`sibrar serve` in a child process, up once /health answers."""

    def __init__(self, run_dir: Path, log: Path, *extra: str) -> None:
        self.port = free_port()
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
        self.log = open(log, "ab")  # noqa: SIM115
        t0 = time.perf_counter()
        self.process = subprocess.Popen([sys.executable, "-m", "sibrar.cli", "serve", str(run_dir), "--port",
                                         str(self.port), *extra], stdout=self.log, stderr=subprocess.STDOUT, env=env)
        while True:
            if self.process.poll() is not None:
                self.log.close()
                raise SystemExit(f"sibrar serve exited with {self.process.returncode}:\n{log.read_text()[-3000:]}")
            try:
                conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=5)
                conn.request("GET", "/health")
                self.health = json.loads(conn.getresponse().read())
                break
            except OSError:
                time.sleep(0.5)
        self.start_s = time.perf_counter() - t0

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=60)
        self.log.close()


def load(port: int, make: Callable[[int], tuple[str, str, bytes | None]], *, clients: int, requests: int,
         duration: float) -> dict[str, float]:
    """Send up to ``requests`` requests (or for ``duration`` s) from ``clients`` threads; latency stats."""
    lock = threading.Lock()
    counter = iter(range(requests))
    latencies: list[float] = []
    errors = [0]
    deadline = time.perf_counter() + duration

    def client() -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        mine = []
        while time.perf_counter() < deadline:
            with lock:
                i = next(counter, None)
            if i is None:
                break
            method, path, body = make(i)
            headers = {"content-type": "application/json"} if body else {}
            t0 = time.perf_counter()
            conn.request(method, path, body=body, headers=headers)
            response = conn.getresponse()
            response.read()
            mine.append(time.perf_counter() - t0)
            if response.status >= 300:
                with lock:
                    errors[0] += 1
        conn.close()
        with lock:
            latencies.extend(mine)

    threads = [threading.Thread(target=client) for _ in range(clients)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    lat = np.array(latencies) * 1e3
    return {"requests": len(lat), "errors": errors[0], "seconds": wall, "rps": len(lat) / wall,
            "p50_ms": float(np.percentile(lat, 50)), "p99_ms": float(np.percentile(lat, 99))}


def scenarios(server: Server, run_items: list[str], genres: list[str], seed: int,
              ) -> dict[str, Callable[[int], tuple[str, str, bytes | None]]]:
    rng = np.random.default_rng(seed)
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    conn.request("GET", f"/users?limit={server.health['n_users']}")
    users = json.loads(conn.getresponse().read())["user_ids"]
    user_pick = rng.choice(len(users), size=100_000)
    liked = rng.choice(len(run_items), size=(100_000, 5))
    tag = f"{seed}-{time.time_ns()}"
    new_ids = itertools.count()  # unique over warm-up and measured runs (next() is atomic under the GIL)

    def user(i: int) -> tuple[str, str, bytes | None]:
        return "GET", f"/users/{users[user_pick[i]]}/recommendations?k=10", None

    def new_user(i: int) -> tuple[str, str, bytes | None]:
        return "POST", "/recommendations", json.dumps({"item_ids": [run_items[j] for j in liked[i]], "k": 10}).encode()

    def add(i: int) -> tuple[str, str, bytes | None]:
        body = {"item_id": f"bench-{tag}-{next(new_ids)}", "title": f"Generated movie {i} (SYNTHETIC)",
                "features": {"genres": [genres[j] for j in liked[i][: 1 + i % 3] % len(genres)],
                             "year": float(1930 + liked[i][0] % 70)}}
        return "POST", "/items", json.dumps(body).encode()

    return {"user top-10": user, "new-user top-10": new_user, "item add": add}


def generated_items(n: int, genres: list[str], seed: int) -> list[dict]:
    """n SYNTHETIC movies: 1-3 random genres, a year in 1920-2000."""
    rng = np.random.default_rng(seed)
    k = rng.integers(1, 4, size=n)
    picks = rng.integers(0, len(genres), size=(n, 3))
    years = rng.integers(1920, 2001, size=n)
    return [{"item_id": f"gen-{i:07d}", "title": f"Generated movie {i} (SYNTHETIC)",
             "features": {"genres": sorted({genres[g] for g in picks[i, : k[i]]}), "year": float(years[i])}}
            for i in range(n)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, default=None, help="a trained run folder (default: train one on ML-1M)")
    parser.add_argument("--work", type=Path, default=Path.home() / ".cache" / "sibrar" / "bench-serve")
    parser.add_argument("--catalogues", default="ml-1m,1m", help="ml-1m (the run's items) and/or 1m (generated)")
    parser.add_argument("--n-items", type=int, default=1_000_000, help="size of the generated catalogue")
    parser.add_argument("--clients", default="1,8")
    parser.add_argument("--requests", type=int, default=2000, help="requests per scenario (upper bound)")
    parser.add_argument("--duration", type=float, default=20.0, help="seconds per scenario (upper bound)")
    parser.add_argument("--quick", action="store_true", help="500 requests, 10 s, a 200k-item generated catalogue")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, default=None, help="also write the rows to this JSON file")
    args = parser.parse_args(argv)
    if args.quick:
        args.requests, args.duration, args.n_items = 500, 10.0, 200_000
    clients = [int(c) for c in args.clients.split(",")]

    started = time.perf_counter()
    print("# serve_speed (loopback load test against `sibrar serve`)")
    print(f"command : {shlex.join([Path(sys.executable).name, *sys.argv])}")
    print(f"date    : {dt.datetime.now(dt.UTC).isoformat(timespec='seconds')}")
    print(f"machine : {machine()}; load average at start {os.getloadavg()[0]:.2f}")
    print(f"commit  : {commit()}")
    print(f"bounds  : {args.requests} requests or {args.duration:g} s per scenario, clients {clients}, 127.0.0.1 only",
          flush=True)
    run = args.run or ensure_run(args.work)
    catalogues = args.catalogues.split(",")
    rows: list[dict] = []
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp) / "ml-1m" / "run"
        shutil.copytree(run, base, ignore=shutil.ignore_patterns("served"))
        server = Server(base, Path(tmp) / "ml-1m.log")
        try:
            run_items, genres = vocabulary(server)
            if "ml-1m" in catalogues:
                rows += measure(server, "ml-1m", run_items, genres, clients, args)
        finally:
            server.stop()
        if "1m" in catalogues:
            copy = Path(tmp) / "1m" / "run"
            shutil.copytree(base, copy, ignore=shutil.ignore_patterns("served"))
            n_new = args.n_items - len(run_items)
            t0 = time.perf_counter()
            ItemStore(copy).add(generated_items(n_new, genres, args.seed))
            print(f"\nwrote {n_new:,} generated SYNTHETIC items in {time.perf_counter() - t0:.1f} s", flush=True)
            server = Server(copy, Path(tmp) / "1m.log")  # embeds them, then indexes all items by catalogue size
            try:
                rows += measure(server, "1m", run_items, genres, clients, args)
            finally:
                server.stop()
    print_summary(rows)
    print(f"\ntotal time {time.perf_counter() - started:.0f} s; load average at end {os.getloadavg()[0]:.2f}")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2) + "\n")
    return 0


def get(port: int, path: str) -> dict:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    conn.request("GET", path)
    return json.loads(conn.getresponse().read())


def vocabulary(server: Server) -> tuple[list[str], list[str]]:
    """The run's item ids and the genre values its item tower knows, asked from the server."""
    listing = get(server.port, "/items?limit=10000")
    ids = [i["item_id"] for i in listing["items"]]
    while len(ids) < listing["n_items"]:
        ids += [i["item_id"] for i in get(server.port, f"/items?offset={len(ids)}&limit=10000")["items"]]
    genres = next(f["values"] for f in get(server.port, "/features")["item"] if f["name"] == "genres")
    return ids, genres


def measure(server: Server, catalogue: str, run_items: list[str], genres: list[str], clients: list[int],
            args: argparse.Namespace) -> list[dict]:
    """Every scenario at every client count against one running server."""
    health = server.health
    print(f"\n## {catalogue}: {health['n_items']:,} items, {health['n_users']:,} users, {health['index']} index "
          f"(server up in {server.start_s:.0f} s)", flush=True)
    rows = []
    for name, make in scenarios(server, run_items, genres, args.seed).items():
        for c in clients:
            load(server.port, make, clients=c, requests=min(50, args.requests), duration=5)  # warm-up
            r = load(server.port, make, clients=c, requests=args.requests, duration=args.duration)
            row = {"catalogue": catalogue, "n_items": health["n_items"], "index": health["index"], "scenario": name,
                   "clients": c, **r, "load_avg": os.getloadavg()[0]}
            rows.append(row)
            print(f"  {name:16s} {c} client(s): {r['rps']:8,.0f} req/s  p50 {r['p50_ms']:6.2f} ms  "
                  f"p99 {r['p99_ms']:6.2f} ms  ({r['requests']} requests, {r['errors']} errors, "
                  f"load {row['load_avg']:.1f})", flush=True)
    return rows


def print_summary(rows: list[dict]) -> None:
    print("\n| catalogue | items | index | scenario | clients | req/s | p50 ms | p99 ms | errors |")
    print("|---|---:|---|---|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['catalogue']} | {r['n_items']:,} | {r['index']} | {r['scenario']} | {r['clients']} "
              f"| {r['rps']:,.0f} | {r['p50_ms']:.2f} | {r['p99_ms']:.2f} | {r['errors']} |")
    big = [r for r in rows if r["catalogue"] != "ml-1m" and r["scenario"] == "user top-10" and r["clients"] == 1]
    small = [r for r in rows if r["catalogue"] == "ml-1m" and r["scenario"] == "user top-10" and r["clients"] == 8]
    for r in big:
        print(f"target (p99 < {TARGET_P99_MS:g} ms, user top-10, {r['n_items']:,} items, 1 client): "
              f"{'MET' if r['p99_ms'] < TARGET_P99_MS else 'NOT MET'} — p99 {r['p99_ms']:.2f} ms")
    for r in small:
        print(f"target (≥ {TARGET_RPS:g} req/s, user top-10, ML-1M, 8 clients): "
              f"{'MET' if r['rps'] >= TARGET_RPS else 'NOT MET'} — {r['rps']:,.0f} req/s")


if __name__ == "__main__":
    sys.exit(main())
