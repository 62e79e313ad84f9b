"""The bench model repository: the two demo models and a third, bench-only model.

``write_bench_repository()`` writes ``<cache>/bench-<torch version>/`` with

- ``detector`` and ``classifier``: the demo models, exactly as ``runtime.demo`` writes them;
- ``embedder``: a second batch model, a plain VGG-style CNN over Nx3x160x160 images that
  returns an L2-normalised 128-d embedding, batches of up to 8 (about half the classifier's
  time per batch, with fewer, longer units). Weights come from a fixed seed, so every
  machine gets the same file; nothing is downloaded.

Every system in the suite (Deft, plain KServe, Triton) serves this folder's ``model.pt2``
files. A folder already written for the same torch version and definition is kept.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Iterable
from pathlib import Path

import torch
import yaml
from torch import nn

from runtime.demo import write_demo_repository
from runtime.model_repository import CONFIG_FILE, ModelConfig

EMBEDDER_VERSION = 1  # bump when the definition below changes
EMBEDDER_CONFIG = """\
# Bench model "embedder": a VGG-style CNN that maps 160x160 images to a 128-d embedding.
# Batch class, like the classifier: a second batch model sharing the device.
priority: batch
max_batch_size: 8
max_queue_delay_ms: 5
max_queue_size: 128
max_units: 12
inputs:
  - {name: image, datatype: FP32, shape: [-1, 3, 160, 160]}
outputs:
  - {name: embedding, datatype: FP32, shape: [-1, 128]}
"""
_STAMP = ".deft-bench.json"


class Embedder(nn.Module):
    """Five stages of two 3x3 convolutions (the first strided), global pooling, a
    projection and L2 normalisation."""

    def __init__(self, widths: tuple[int, ...] = (48, 96, 192, 256, 384), dim: int = 128):
        super().__init__()
        layers: list[nn.Module] = []
        cin = 3
        for width in widths:
            layers += [
                nn.Conv2d(cin, width, 3, 2, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU(),
                nn.Conv2d(width, width, 3, 1, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU(),
            ]
            cin = width
        self.features = nn.Sequential(*layers)
        self.proj = nn.Linear(cin, dim)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        x = nn.functional.adaptive_avg_pool2d(self.features(image), 1).flatten(1)
        return nn.functional.normalize(self.proj(x), dim=1)


def build_embedder(seed: int = 0) -> nn.Module:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = Embedder()
        # non-trivial batch-norm statistics, so the exported constants are not all 0/1
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    return model.eval()


def default_bench_dir() -> Path:
    root = os.environ.get("DEFT_CACHE_DIR")
    base = Path(root) if root else Path.home() / ".cache" / "deft"
    return base / f"bench-{torch.__version__}"


def _write_embedder(folder: Path) -> None:
    stamp = {"version": EMBEDDER_VERSION, "torch": torch.__version__,
             "config_sha256": hashlib.sha256(EMBEDDER_CONFIG.encode()).hexdigest()}
    try:
        if (folder / "model.pt2").is_file() and \
                json.loads((folder / _STAMP).read_text()) == stamp:
            return
    except (OSError, ValueError):
        pass
    folder.mkdir(parents=True, exist_ok=True)
    config = ModelConfig.from_dict("embedder", yaml.safe_load(EMBEDDER_CONFIG))
    batch = torch.export.Dim("batch", min=1, max=config.max_batch_size)
    with torch.no_grad():
        program = torch.export.export(
            build_embedder(), (), kwargs=config.example_inputs(2),
            dynamic_shapes={"image": {0: batch}})
    tmp = folder / f".model.pt2.{os.getpid()}.tmp"
    torch.export.save(program, tmp)
    os.replace(tmp, folder / "model.pt2")
    (folder / CONFIG_FILE).write_text(EMBEDDER_CONFIG)
    (folder / _STAMP).write_text(json.dumps(stamp))


def write_bench_repository(path: Path | None = None) -> Path:
    """Write (or keep) the bench repository and return its path."""
    root = path or default_bench_dir()
    write_demo_repository(root)
    _write_embedder(root / "embedder")
    return root


def subset_repository(root: Path, names: Iterable[str], dest: Path) -> Path:
    """``root`` itself when it holds nothing but ``names``; otherwise a repository at ``dest``
    with only those model folders (hard links where the file system allows, else copies), so
    that every server, the profile and the predictor see the same models and no others."""
    wanted = set(names)
    every = {p.name for p in root.iterdir() if (p / "model.pt2").is_file()}
    missing = wanted - every
    if missing:
        raise ValueError(f"{root} has no models {sorted(missing)}")
    if wanted == every:
        return root
    shutil.rmtree(dest, ignore_errors=True)
    for name in sorted(wanted):
        shutil.copytree(root / name, dest / name, copy_function=_link_or_copy)
    return dest


def _link_or_copy(src: str, dst: str) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def model_specs(root: Path) -> dict[str, dict]:
    """Each model's ``config.yaml`` as plain data: name -> {max_batch_size, max_queue_delay_ms,
    inputs, outputs, path} (what the driver and the peer servers need)."""
    out: dict[str, dict] = {}
    for folder in sorted(p for p in root.iterdir() if (p / "model.pt2").is_file()):
        cfg = yaml.safe_load((folder / CONFIG_FILE).read_text()) or {}
        out[folder.name] = {
            "name": folder.name,
            "path": str(folder / "model.pt2"),
            "max_batch_size": int(cfg.get("max_batch_size", 1)),
            "max_queue_delay_us": int(1000 * float(cfg.get("max_queue_delay_ms", 0))),
            "priority": cfg.get("priority", "batch"),
            "slo_ms": cfg.get("slo_ms"),
            "inputs": cfg.get("inputs", []),
            "outputs": cfg.get("outputs", []),
        }
    return out
