"""``scheduler/`` stays importable without torch, kserve or fastapi."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
FORBIDDEN = {"torch", "kserve", "fastapi", "uvicorn", "numpy", "runtime", "controller"}


def test_no_forbidden_imports_in_scheduler_sources():
    offenders = []
    for path in (ROOT / "scheduler").rglob("*.py"):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [node.module]
            offenders += [f"{path.name}: {n}" for n in names if n.split(".")[0] in FORBIDDEN]
    assert offenders == []


def test_importing_the_scheduler_loads_no_heavy_framework():
    code = (
        "import sys, scheduler.core, scheduler.loop, scheduler.sim.__main__;"
        "bad = [m for m in ('torch', 'kserve', 'fastapi') if m in sys.modules];"
        "print(bad); sys.exit(1 if bad else 0)"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
