"""e2e/bench/gpu.sh's offline path, with stand-ins for nvidia-smi and the host's Python."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_offline_kit_installs_beside_the_hosts_python_and_runs_the_gpu_suite(tmp_path):
    bin_dir, kit, site = tmp_path / "bin", tmp_path / "kit", tmp_path / "site"
    bin_dir.mkdir()
    kit.mkdir()
    (kit / "kserve-0.21.0-py3-none-any.whl").write_bytes(b"")
    calls = tmp_path / "calls"
    (bin_dir / "nvidia-smi").write_text("#!/bin/sh\necho 'GPU 0: a test GPU'\n")
    # the host's python3: records each call and the PYTHONPATH it saw
    (bin_dir / "python3").write_text(
        f'#!/bin/sh\nprintf "%s | %s\\n" "$PYTHONPATH" "$(echo "$*" | tr "\\n" " ")" >> {calls}\n')
    for f in bin_dir.iterdir():
        f.chmod(0o755)
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "OFFLINE_KIT": str(kit),
           "SITE": str(site)}
    env.pop("PYTHONPATH", None)
    done = subprocess.run(["bash", str(ROOT / "e2e/bench/gpu.sh"), "--systems", "deft"],
                          env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "a test GPU" in done.stdout
    provided, install, check, bench = calls.read_text().splitlines()
    assert "import torch, numpy, pandas, PIL, matplotlib" in provided
    assert install.split(" | ")[1].startswith("-m pip install")
    for flag in ("--no-index", "--no-deps", f"--target {site}", f"{kit}/kserve-0.21.0"):
        assert flag in install
    assert "torch.cuda.is_available()" in check
    path, args = bench.split(" | ")
    assert path.split(":")[:2] == [str(site), str(ROOT)]
    assert args.split()[:3] == ["-m", "e2e.bench", "--gpu"]
    assert "--peer_python /nonexistent/peer-python" in args
    assert args.rstrip().endswith("--systems deft")


def test_scripts_parse():
    for script in ("gpu.sh", "offline_kit.sh"):
        done = subprocess.run(["bash", "-n", str(ROOT / "e2e/bench" / script)],
                              capture_output=True, text=True)
        assert done.returncode == 0, done.stderr
