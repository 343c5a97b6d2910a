"""Validation and test nDCG@10 per model label over one or more results folders (e.g. seeds) as markdown.

    python experiments/fidelity_table.py NAME=DIR[,DIR...] [NAME=DIR...]

Each NAME=DIR,... is a column group (e.g. before=..., after=...); each DIR is a `sibrar run` results
folder. Cells are the mean over the folders, with the standard deviation when there are several.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from statistics import mean, stdev


def cell(values: list[float]) -> str:
    return f"{mean(values):.4f}" + (f" ± {stdev(values):.4f}" if len(values) > 1 else "")


def main(argv: list[str]) -> None:
    groups = [(name, [Path(d) for d in dirs.split(",")]) for name, _, dirs in (a.partition("=") for a in argv)]
    rows: dict[str, dict[str, dict[str, list[float]]]] = {}
    for name, dirs in groups:
        for folder in dirs:
            models = json.loads((folder / "results.json").read_text(encoding="utf-8"))["models"]
            for label, result in models.items():
                for split in ("valid", "test"):
                    rows.setdefault(label, {}).setdefault(name, {}).setdefault(split, []).append(result[split]["ndcg@10"])
    header = [f"{name} {split} nDCG@10" for name, _ in groups for split in ("valid", "test")]
    print("| model | " + " | ".join(header) + " | runs |")
    print("|---|" + "---:|" * (len(header) + 1))
    for label, by_group in rows.items():
        cells = [cell(by_group[name][split]) if name in by_group else "–" for name, _ in groups for split in ("valid", "test")]
        runs = max(len(v["valid"]) for v in by_group.values())
        print(f"| {label} | " + " | ".join(cells) + f" | {runs} |")


if __name__ == "__main__":
    main(sys.argv[1:])
