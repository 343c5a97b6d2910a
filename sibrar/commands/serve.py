"""`sibrar serve RUN_DIR`: an HTTP service (FastAPI + uvicorn) over a trained run."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    serve = sub.add_parser("serve", help="HTTP API and a page to try a trained run: top-k, similar items, new users, "
                                         "new items from side information")
    serve.add_argument("run_dir")
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only)")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--index", choices=["flat", "hnsw", "ivf", "ivfpq"], default=None,
                       help="item index kind (default: the one saved next to the run, else chosen by catalogue size)")
    serve.add_argument("--max-body-bytes", type=int, default=None, help="request body limit (default 64 KiB)")
    serve.add_argument("--log-level", default="warning", choices=["critical", "error", "warning", "info", "debug"])
    serve.add_argument("--threads", type=int, default=1,
                       help="threads per request for torch, faiss and polars (default 1: requests run side by side)")
    serve.add_argument("--device", default="cpu")
    serve.set_defaults(func=_serve)


def _serve(args: argparse.Namespace) -> int:
    import os
    import sys

    from sibrar.errors import ConfigError

    if args.threads < 1:
        raise ConfigError(f"--threads must be at least 1, got {args.threads}")
    if "polars" not in sys.modules:  # polars sizes its pool once, at import
        os.environ.setdefault("POLARS_MAX_THREADS", str(args.threads))
    import faiss
    import torch
    import uvicorn

    # one small request is faster on one thread, and thread pools spinning against each other on a
    # busy machine cost tens of milliseconds per request
    torch.set_num_threads(args.threads)
    faiss.omp_set_num_threads(args.threads)

    from sibrar.serve.app import MAX_BODY_BYTES, create_app
    from sibrar.serve.service import Service

    service = Service.load(args.run_dir, index=args.index, device=args.device)
    app = create_app(service, max_body_bytes=args.max_body_bytes or MAX_BODY_BYTES)
    health = service.health()
    print(f"serving {health['model']} run {args.run_dir} ({health['n_users']} users, {health['n_items']} items, "
          f"{health['index']} index) at http://{args.host}:{args.port}/  (API docs: /docs)", flush=True)
    uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level, access_log=False)
    return 0
