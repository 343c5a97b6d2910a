"""One markdown page per results folder, readable without running anything: tables and plots."""

from __future__ import annotations

import math
from pathlib import Path

from sibrar._io import read_json, write_text_atomic
from sibrar.errors import ConfigError
from sibrar.report.tables import tuning_section

HEADLINE = ("precision@10", "recall@10", "ndcg@10", "map@10", "coverage@10")


def write_report(folder: Path) -> Path:
    """Write `<folder>/REPORT.md` from results.json and the PNG files beside it."""
    path = folder / "results.json"
    if not path.is_file():
        raise ConfigError(f"{folder}: no results.json (make one with `sibrar run` or `sibrar demo`)")
    data = read_json(path, "results file", ConfigError)
    if not isinstance(data, dict) or not isinstance(data.get("models"), dict):
        raise ConfigError(f"{path}: not a `sibrar run` results.json (no 'models' mapping)")
    models = data["models"]
    winners = data.get("significant_winner", {})
    synthetic = " — SYNTHETIC data" if data.get("synthetic") else ""
    lines = [f"# {data.get('experiment')}: {data.get('dataset')} {data.get('protocol')}{synthetic}", "",
             f"Test set, candidates `{data.get('candidates')}`, split hash `{str(data.get('split_hash'))[:12]}`; "
             "† = significantly better than all other models (paired t-test, Bonferroni).", ""]
    metrics = [m for m in HEADLINE if any(m in v["test"] for v in models.values())]
    lines += ["| model | " + " | ".join(metrics) + " |", "|---|" + "---:|" * len(metrics)]
    for label, info in models.items():
        cells = [f"{info['test'].get(m, math.nan):.4f}" + ("†" if winners.get(m) == label else "") for m in metrics]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    if data.get("tuning"):
        rows = [(label, info.get("tuning"), info.get("valid", {}), info["test"]) for label, info in models.items()]
        lines += ["", *tuning_section(rows, data["tuning"])]
    views = sorted({v for info in models.values() for v in info.get("views", {})})
    if views:
        lines += ["", "## Missing modalities (nDCG@10, relative change)", "",
                  "| model | all | " + " | ".join(views) + " |", "|---|---:|" + "---:|" * len(views)]
        for label, info in models.items():
            base = info["test"].get("ndcg@10", math.nan)
            cells = []
            for v in views:
                value = info.get("views", {}).get(v, {}).get("ndcg@10", math.nan)
                cells.append(f"{value:.4f} ({(value - base) / base:+.1%})" if base else f"{value:.4f}")
            lines.append(f"| {label} | {base:.4f} | " + " | ".join(cells) + " |")
    for png in sorted(folder.glob("*.png")):
        lines += ["", f"![{png.stem}]({png.name})"]
    out = folder / "REPORT.md"
    write_text_atomic(out, "\n".join(lines) + "\n")
    return out
