"""Imports flow one way (../shared/DESIGN.md, "Layout"):

    cli -> demo -> {trainer, sft} -> {evaluate, checkpoint, metrics, plan}
        -> {rollout, engine, data, rewards, config} -> models -> parallel -> {algo, kernels}
        -> {tasks, atomic}

A unit is a top-level module or sub-package of ``mixed_r1``. Every ``import mixed_r1.X`` in the
package (function-level imports included: a lazy import is still a dependency) must go to a unit of
a lower tier, or to one of the same tier without closing a cycle. ``algo`` and ``kernels`` import
nothing of the package but each other; ``rewards`` and ``data`` import neither
``torch.distributed`` nor megatron; ``config`` loads no torch (checked in a fresh interpreter).
"""
from __future__ import annotations

import ast
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

PKG = Path(__file__).resolve().parents[1] / "mixed_r1"

TIERS = [
    {"cli"},
    {"demo"},
    {"trainer", "sft"},
    {"evaluate", "checkpoint", "metrics", "plan"},
    {"rollout", "engine", "data", "rewards", "config"},
    {"models"},  # per-family megatron modules use parallel's groups and vocab-parallel ops
    {"parallel"},  # ParallelDims, process groups, schedule, shim: no model code
    {"algo", "kernels"},
    {"tasks", "atomic"},  # leaves: import nothing of the package
]
TIER = {unit: i for i, units in enumerate(TIERS) for unit in units}


def _unit(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def _imports() -> list[tuple[str, str, str]]:
    """(importing file, imported module, its unit) for every absolute mixed_r1 import."""
    out = []
    for f in sorted(PKG.rglob("*.py")):
        for node in ast.walk(ast.parse(f.read_text(), str(f))):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [node.module or ""]
                if node.level:  # relative: resolve against the file's package
                    pkg = list(f.relative_to(PKG.parent).with_suffix("").parts)
                    base = pkg[:len(pkg) - node.level]
                    names = [".".join(base + ([node.module] if node.module else []))]
            else:
                continue
            out += [(str(f.relative_to(PKG.parent)), n, f"{node.lineno}") for n in names]
    return out


def _unit_of_file(path: str) -> str:
    parts = Path(path).with_suffix("").parts  # ("mixed_r1", "trainer") / ("mixed_r1", "cli", ...)
    return parts[1]


def test_every_unit_has_a_tier():
    units = {p.stem if p.is_file() else p.name for p in PKG.iterdir()
             if (p.suffix == ".py" and p.stem != "__init__") or (p / "__init__.py").is_file()}
    assert units <= set(TIER), f"give these units a tier: {sorted(units - set(TIER))}"


def test_imports_flow_one_way():
    edges: dict[str, set[str]] = defaultdict(set)
    wrong = []
    for path, module, line in _imports():
        if not module.startswith("mixed_r1."):
            continue
        src, dst = _unit_of_file(path), _unit(module)
        if src == dst:
            continue
        if TIER[dst] < TIER[src]:
            wrong.append(f"{path}:{line} imports {module} (tier {TIER[dst]} above {src}'s "
                         f"tier {TIER[src]})")
        edges[src].add(dst)
    assert not wrong, "imports against the direction:\n" + "\n".join(wrong)

    # same-tier imports are allowed, but not both ways round (no cycle between units)
    def reach(a: str, seen: set[str]) -> set[str]:
        for b in edges.get(a, ()):
            if b not in seen:
                seen.add(b)
                reach(b, seen)
        return seen

    cycles = sorted(u for u in edges if u in reach(u, set()))
    assert not cycles, f"units importing each other (a cycle): {cycles}"


def test_leaf_packages_stay_leaves():
    bad = []
    for path, module, line in _imports():
        src = _unit_of_file(path)
        if src in ("algo", "kernels") and module.startswith("mixed_r1.") \
                and _unit(module) not in ("algo", "kernels"):
            bad.append(f"{path}:{line} imports {module}")
        if src in ("rewards", "data") and module.startswith(("torch.distributed", "megatron")):
            bad.append(f"{path}:{line} imports {module}")
    assert not bad, "\n".join(bad)


def test_config_loads_no_torch():
    code = ("import sys, mixed_r1.config, mixed_r1.cli; mixed_r1.cli.build_parser(); "
            "print(sorted(m for m in ('torch', 'transformers', 'megatron') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=PKG.parent)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr


def test_the_check_can_fail(tmp_path, monkeypatch):
    """An import against the direction, planted in a copy of the rule's input, is reported."""
    fake = [("mixed_r1/models/x.py", "mixed_r1.trainer", "1")]
    monkeypatch.setattr(sys.modules[__name__], "_imports", lambda: fake)
    try:
        test_imports_flow_one_way()
    except AssertionError as exc:
        assert "mixed_r1/models/x.py:1 imports mixed_r1.trainer" in str(exc)
    else:
        raise AssertionError("a models -> trainer import was not reported")
