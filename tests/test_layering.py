"""The package's import graph has no cycle (every import counts, function-local and TYPE_CHECKING ones too)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from _import_graph import describe_cycles, find_cycles, import_graph, main

PACKAGE = Path(__file__).resolve().parents[1] / "sibrar"


def _package(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        path = root / "pkg" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    return root / "pkg"


def test_sibrar_has_no_import_cycle() -> None:
    assert describe_cycles(PACKAGE) == []


def test_config_imports_nothing_from_the_models() -> None:
    graph = import_graph(PACKAGE)
    assert not {m for m in graph["sibrar.config"] if m.startswith("sibrar.models")}
    assert "sibrar.experiment" not in graph["sibrar.report.tables"]


def test_a_cycle_through_a_function_local_import_is_found(tmp_path: Path) -> None:
    pkg = _package(tmp_path, {
        "__init__.py": "",
        "low.py": "def f():\n    from pkg.high import g\n    return g\n",
        "high.py": "from pkg import low\n\ndef g():\n    return low\n",
        "other.py": "from pkg.low import f\n",
    })
    assert find_cycles(import_graph(pkg)) == [["pkg.high", "pkg.low"]]
    assert main([str(pkg)]) == 1


def test_relative_type_checking_and_package_init_cycles_are_found(tmp_path: Path) -> None:
    pkg = _package(tmp_path, {
        "__init__.py": "",
        "a.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from .b import B\n",
        "b.py": "from . import a\nB = 1\n",
        "sub/__init__.py": "from pkg.sub import impl\n",
        "sub/impl.py": "from pkg.c import x\n",
        "c.py": "import pkg.sub.impl\nx = 1\n",  # runs pkg/sub/__init__ first
    })
    assert find_cycles(import_graph(pkg)) == [["pkg.a", "pkg.b"], ["pkg.c", "pkg.sub", "pkg.sub.impl"]]


def test_siblings_importing_each_other_through_their_package_are_not_a_cycle(tmp_path: Path) -> None:
    pkg = _package(tmp_path, {
        "__init__.py": "from pkg import a, b\n",
        "a.py": "X = 1\n",
        "b.py": "from pkg.a import X\n",
    })
    assert find_cycles(import_graph(pkg)) == []


def test_the_checker_runs_as_a_script() -> None:
    script = Path(__file__).with_name("_import_graph.py")
    done = subprocess.run([sys.executable, str(script), str(PACKAGE)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "no import cycle" in done.stdout


def test_a_config_parsed_from_python_resolves_the_built_in_models_in_a_fresh_interpreter() -> None:
    code = ("from sibrar.config import parse_run_config\n"
            "print(*(parse_run_config({'model': {'name': n}}).model.name for n in ('clcrec', 'multibranch', 'pop')))\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["clcrec", "multibranch", "pop"]
