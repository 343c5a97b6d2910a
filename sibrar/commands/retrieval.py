"""`sibrar index` and `sibrar recommend`: a FAISS index next to a run, top-k lists, new items."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    index = sub.add_parser("index", help="build (or rebuild) the FAISS item index of a trained run in RUN_DIR/index/")
    index.add_argument("run_dir")
    index.add_argument("--kind", default="auto", choices=["auto", "flat", "hnsw", "ivf", "ivfpq"],
                       help="flat = exact; hnsw / ivf / ivfpq (IVF fast-scan PQ + exact rerank) = approximate; "
                            "auto (default) = flat below 200,000 items, ivfpq above")
    index.add_argument("--device", default="cpu")
    index.set_defaults(func=_index)

    rec = sub.add_parser("recommend", help="top-k unseen items for known users; add new items from a .item file")
    rec.add_argument("run_dir")
    who = rec.add_mutually_exclusive_group()
    who.add_argument("--user", action="append", default=[], metavar="ID", help="a user id of the run (repeatable)")
    who.add_argument("--all", action="store_true", help="every user of the run, written to --out")
    rec.add_argument("--out", help="parquet file for --all (user_id, rank, item_id, score)")
    rec.add_argument("--k", type=int, default=10)
    rec.add_argument("--new-item", metavar="FILE",
                     help="RecBole .item atomic file of new items (item_id + the item modalities' columns); they are "
                          "embedded from these features and join the candidates; alone: print each one's top-k users")
    rec.add_argument("--on-unknown", default="error", choices=["error", "ignore"],
                     help="unknown categories / tags in --new-item: fail (default) or drop with a warning")
    rec.add_argument("--device", default="cpu")
    rec.set_defaults(func=_recommend)


def _index(args: argparse.Namespace) -> int:
    from sibrar.retrieval.index import IndexConfig
    from sibrar.retrieval.recommender import Recommender

    config = None if args.kind == "auto" else IndexConfig(kind=args.kind)  # None: chosen by catalogue size
    rec = Recommender.load(args.run_dir, device=args.device, index_config=config, rebuild=True)
    kind = rec.index.config.kind
    print(f"indexed {rec.index.n_items} items ({kind}, dim {rec.index.dim}) in {Path(args.run_dir) / 'index'}")
    return 0


def _recommend(args: argparse.Namespace) -> int:
    import numpy as np

    from sibrar.data.atomic import read_atomic
    from sibrar.errors import DataError, RetrievalError
    from sibrar.retrieval.recommender import GEMM_MAX_ITEMS, Recommender

    if args.all and not args.out:
        raise RetrievalError("--all writes a parquet file: give --out FILE")
    if not (args.all or args.user or args.new_item):
        raise RetrievalError("say what to recommend: --user ID, --all --out FILE, or --new-item FILE")
    new_items = None
    if args.new_item:  # read before the (slower) run load: bad files fail fast
        try:
            new_items = read_atomic(args.new_item).frame
        except DataError as exc:
            raise RetrievalError(str(exc)) from exc
        if "item_id" not in new_items.columns:
            raise RetrievalError(f"{args.new_item}: no item_id column; columns: {', '.join(new_items.columns)}")
    rec = Recommender.load(args.run_dir, device=args.device)
    if new_items is not None:
        ids = new_items["item_id"].cast(str).to_list()
        rec.check_k(args.k)
        positions = rec.add_items(ids, new_items.drop("item_id"), on_unknown=args.on_unknown)
        print(f"added {len(positions)} new items from {args.new_item}")
        if not (args.all or args.user):
            item_emb = rec.item_embeddings(positions)  # (N, d)
            k = min(args.k, len(rec.user_ids))
            scores = item_emb @ rec.user_emb.T  # (N, U)
            for row, item_id in enumerate(ids):
                top = np.argsort(-scores[row], kind="stable")[:k]
                users = " ".join(f"{u}({s:.3f})" for u, s in zip(rec.user_ids.id_of(top), scores[row, top]))
                print(f"new item {item_id}: top users {users}")
            return 0
    if args.all:
        path = rec.write_all(args.out, args.k)
        how = "exact GEMM" if rec.n_items <= GEMM_MAX_ITEMS or rec.index.config.kind == "flat" else f"{rec.index.config.kind} index"
        print(f"written {path} ({len(rec.user_ids)} users × up to {args.k} items; {how})")
        return 0
    frame = rec.recommend(args.user, args.k)
    for user_id in args.user:
        rows = frame.filter(frame["user_id"] == user_id)
        print(f"user {user_id}: " + " ".join(f"{i}({s:.3f})" for i, s in zip(rows["item_id"], rows["score"])))
    return 0
