"""`sibrar data fetch|split|stats` and `sibrar datasets`."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from sibrar._io import read_json
from sibrar.errors import DataError


def register(sub: argparse._SubParsersAction) -> None:
    data = sub.add_parser("data", help="fetch, split and describe datasets")
    data_sub = data.add_subparsers(dest="data_command", required=True, metavar="ACTION")

    fetch = data_sub.add_parser("fetch", help="fetch a dataset into the data root as atomic files")
    fetch.add_argument("name", help="source name (see `sibrar datasets`)")
    fetch.add_argument("--root", help="data root (default $SIBRAR_DATA or ~/.cache/sibrar)")
    fetch.add_argument("--force", action="store_true", help="fetch again even if present")
    fetch.set_defaults(func=_fetch)

    split = data_sub.add_parser("split", help="split a dataset and save RecBole benchmark files + split.json")
    split.add_argument("dataset", help="fetch name or folder of atomic files")
    split.add_argument("--protocol", default="cold_item", help="random|temporal|cold_item|cold_user|cold_both")
    split.add_argument("--seed", type=int, default=42)
    split.add_argument("--ratios", default="0.8,0.1,0.1", help="train,valid,test (sum to 1)")
    split.add_argument("--rating-threshold", type=float, default=None, help="keep ratings >= this as positives")
    split.add_argument("--k-core", type=int, default=5)
    split.add_argument("--out", help="output folder (default <dataset>/splits/<protocol>-seed<seed>)")
    split.add_argument("--root", help="data root")
    split.set_defaults(func=_split)

    stats = data_sub.add_parser("stats", help="counts, density, modality coverage (and part sizes of a split)")
    stats.add_argument("target", help="fetch name, folder of atomic files, or a split folder")
    stats.add_argument("--rating-threshold", type=float, default=None)
    stats.add_argument("--k-core", type=int, default=0, help="k-core before counting (default 0: raw counts)")
    stats.add_argument("--root", help="data root")
    stats.add_argument("--json", action="store_true", help="print JSON")
    stats.set_defaults(func=_stats)

    datasets = sub.add_parser("datasets", help="list the dataset sources `sibrar data fetch` knows")
    datasets.set_defaults(func=_datasets)


def _fetch(args: argparse.Namespace) -> int:
    from sibrar.data.sources import fetch

    folder = fetch(args.name, args.root, force=args.force)
    print(f"{args.name}: atomic files in {folder}")
    for path in sorted(folder.iterdir()):
        if path.is_file():
            print(f"  {path.name:32s} {path.stat().st_size / 1e6:8.2f} MB")
    return 0


def _parse_ratios(text: str) -> tuple[float, float, float]:
    try:
        values = tuple(float(x) for x in text.split(","))
    except ValueError:
        raise DataError(f"--ratios {text!r}: expected three comma-separated numbers, e.g. 0.8,0.1,0.1") from None
    if len(values) != 3:
        raise DataError(f"--ratios {text!r}: expected three numbers (train,valid,test), got {len(values)}")
    return values  # type: ignore[return-value]


def _check_flags(args: argparse.Namespace) -> None:
    """Numeric flags obey the ranges of the config fields they set (NaN and negative k-core refused)."""
    from sibrar.config import check_value

    for flag, field in (("k_core", "k_core"), ("rating_threshold", "rating_threshold"), ("seed", "seed")):
        if hasattr(args, flag):
            check_value(getattr(args, flag), field, "--" + flag.replace("_", "-"))


def _split(args: argparse.Namespace) -> int:
    from sibrar.config import DataConfig, SplitConfig, convert
    from sibrar.data.dataset import load_dataset
    from sibrar.data.splits import default_split_dir, make_split, save_split

    _check_flags(args)
    split_cfg = SplitConfig(protocol=convert(_protocol_type(), args.protocol, "--protocol"),
                            ratios=_parse_ratios(args.ratios), seed=args.seed)
    dataset = load_dataset(DataConfig(dataset=args.dataset, root=args.root, rating_threshold=args.rating_threshold, k_core=args.k_core))
    split = make_split(dataset, split_cfg)
    out = Path(args.out) if args.out else default_split_dir(dataset, split_cfg)
    save_split(split, dataset, out)
    counts = split.manifest["counts"]
    print(f"{dataset.name} {split.protocol} seed {split.seed}: train {counts['train']:,} / valid {counts['valid']:,} / "
          f"test {counts['test']:,} interactions (dropped {split.manifest['dropped']:,}) -> {out}")
    print(f"split hash {split.hash[:16]}  input hash {split.manifest['input_hash'][:16]}")
    return 0


def _protocol_type() -> object:
    from typing import get_type_hints

    from sibrar.config import SplitConfig

    return get_type_hints(SplitConfig)["protocol"]


def _stats(args: argparse.Namespace) -> int:
    from sibrar.config import DataConfig
    from sibrar.data.dataset import load_dataset
    from sibrar.data.splits import load_split

    _check_flags(args)
    target = Path(args.target)
    split_manifest = None
    if (target / "split.json").is_file():
        split_manifest = read_json(target / "split.json", "split manifest", DataError)
        pre = split_manifest.get("preprocessing", {})
        dataset = load_dataset(DataConfig(dataset=str(target.parent.parent), root=args.root,
                                          rating_threshold=pre.get("rating_threshold"), min_count=pre.get("min_count"),
                                          k_core=int(pre.get("k_core", 5))))
        split = load_split(target, dataset)
    else:
        dataset = load_dataset(DataConfig(dataset=args.target, root=args.root, rating_threshold=args.rating_threshold, k_core=args.k_core))
        split = None
    stats = dataset.stats()
    if split is not None:
        stats["split"] = {
            "protocol": split.protocol, "seed": split.seed,
            **{part: {"interactions": split.part(part).height, "users": split.part(part)["user_idx"].n_unique(),
                      "items": split.part(part)["item_idx"].n_unique(), "cold_items": len(split.cold_items(part)),
                      "cold_users": len(split.cold_users(part)), "candidates": len(split.candidates(part))}
               for part in ("train", "valid", "test")},
        }
    if args.json:
        print(json.dumps(stats, indent=2))
        return 0
    label = " (SYNTHETIC)" if stats["synthetic"] else ""
    print(f"{stats['name']}{label}: {stats['users']:,} users / {stats['items']:,} items / "
          f"{stats['interactions']:,} interactions, density {stats['density']:.4%}")
    for entity in ("user", "item"):
        for name, info in stats[f"{entity}_modalities"].items():
            print(f"  {entity:4s} {name:24s} {info['kind']:12s} coverage {info['coverage']:.1%}")
    if "split" in stats:
        for part in ("train", "valid", "test"):
            p = stats["split"][part]
            print(f"  {part:5s} {p['interactions']:>10,} interactions  {p['users']:>7,} users  {p['items']:>7,} items  "
                  f"cold items {p['cold_items']:,}  cold users {p['cold_users']:,}  candidates {p['candidates']:,}")
    return 0


def _datasets(args: argparse.Namespace) -> int:
    from sibrar.data.sources import list_sources

    for source in list_sources():
        tag = " [synthetic]" if source.synthetic else ""
        print(f"{source.name:20s} {source.description}{tag}")
    return 0
