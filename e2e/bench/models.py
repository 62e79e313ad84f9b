"""The bench model repository: the two demo models and bench-only models.

``write_bench_repository()`` writes ``<cache>/bench-<torch version>/`` with

- ``detector`` and ``classifier``: the demo models, exactly as ``runtime.demo`` writes them;
- ``embedder``: a second batch model, a plain VGG-style CNN over Nx3x160x160 images that
  returns an L2-normalised 128-d embedding, batches of up to 8 (about half the classifier's
  time per batch, with fewer, longer units);
- ``encoder``, written only when asked for (the GPU mixes): a transformer encoder over 256
  token ids, batches of up to 64. Its requests are small (128 KiB for 64 rows) and its
  compute large (about 0.9 TFLOP a batch of 64), so on a GPU the device, not the host,
  bounds it: the batch model that shows preemption there. On a CPU a batch takes seconds.

Weights come from a fixed seed, so every machine gets the same files; nothing is downloaded.

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

from runtime.demo import atomic_write, write_demo_repository
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


ENCODER_VERSION = 1  # bump when the definition below changes
ENCODER_CONFIG = """\
# Bench model "encoder": a transformer encoder over 256 token ids (a text model's batch
# jobs). Small requests, large compute: on a GPU the device bounds it, not the host.
priority: batch
max_batch_size: 64
max_queue_delay_ms: 5
max_queue_size: 64
max_units: 16
inputs:
  - {name: tokens, datatype: INT64, shape: [-1, 256]}
outputs:
  - {name: embedding, datatype: FP32, shape: [-1, 512]}
"""


class EncoderBlock(nn.Module):
    """Pre-norm self-attention and feed-forward, written out in plain tensor ops (no fused
    kernels that only one device has), so that the exported graph runs on any device."""

    def __init__(self, width: int, heads: int, hidden: int) -> None:
        super().__init__()
        self.heads = heads
        self.norm1, self.norm2 = nn.LayerNorm(width), nn.LayerNorm(width)
        self.qkv, self.out = nn.Linear(width, 3 * width), nn.Linear(width, width)
        self.up, self.down = nn.Linear(width, hidden), nn.Linear(hidden, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape
        qkv = self.qkv(self.norm1(x)).reshape(b, n, 3, self.heads, d // self.heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
        att = torch.softmax((q @ k.transpose(-2, -1)) * (d // self.heads) ** -0.5, dim=-1)
        x = x + self.out((att @ v).transpose(1, 2).reshape(b, n, d))
        return x + self.down(nn.functional.gelu(self.up(self.norm2(x))))


class Encoder(nn.Module):
    """Token and position embeddings, ``depth`` blocks, mean pooling, L2 normalisation. Ids
    outside the vocabulary are clamped into it: an index error on a GPU would be a device
    assert that ends the process, not an answer to one bad request."""

    def __init__(self, vocab: int = 8192, seq: int = 256, width: int = 512, depth: int = 8,
                 heads: int = 8, hidden: int = 2048) -> None:
        super().__init__()
        self.vocab = vocab
        self.embed = nn.Embedding(vocab, width)
        self.pos = nn.Parameter(torch.randn(seq, width) * 0.02)
        self.blocks = nn.Sequential(*(EncoderBlock(width, heads, hidden) for _ in range(depth)))
        self.norm = nn.LayerNorm(width)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        x = self.embed(tokens.clamp(0, self.vocab - 1)) + self.pos
        x = self.norm(self.blocks(x)).mean(dim=1)
        return nn.functional.normalize(x, dim=1)


def build_encoder(seed: int = 0, **dims: int) -> nn.Module:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return Encoder(**dims).eval()


def default_bench_dir() -> Path:
    root = os.environ.get("DEFT_CACHE_DIR")
    base = Path(root) if root else Path.home() / ".cache" / "deft"
    return base / f"bench-{torch.__version__}"


def write_exported(folder: Path, name: str, model: nn.Module, config_text: str,
                   version: int) -> None:
    """Export ``model`` (dynamic batch) into ``folder`` with ``config_text`` as its
    ``config.yaml``; kept as it is when it was written for the same version, torch and
    config."""
    stamp = {"version": version, "torch": torch.__version__,
             "config_sha256": hashlib.sha256(config_text.encode()).hexdigest()}
    try:
        if (folder / "model.pt2").is_file() and \
                json.loads((folder / _STAMP).read_text()) == stamp:
            return
    except (OSError, ValueError):
        pass
    folder.mkdir(parents=True, exist_ok=True)
    config = ModelConfig.from_dict(name, yaml.safe_load(config_text))
    batch = torch.export.Dim("batch", min=1, max=config.max_batch_size)
    with torch.no_grad():
        program = torch.export.export(
            model, (), kwargs=config.example_inputs(2),
            dynamic_shapes={t.name: {0: batch} for t in config.inputs})
    atomic_write(folder / "model.pt2", lambda p: torch.export.save(program, p))
    (folder / CONFIG_FILE).write_text(config_text)
    (folder / _STAMP).write_text(json.dumps(stamp))


# the models written only when a mix names them: name -> writer
OPTIONAL_MODELS = {
    "encoder": lambda folder: write_exported(folder, "encoder", build_encoder(),
                                             ENCODER_CONFIG, ENCODER_VERSION),
}


def write_bench_repository(path: Path | None = None, models: Iterable[str] = ()) -> Path:
    """Write (or keep) the bench repository and return its path; ``models`` may name
    optional models (``OPTIONAL_MODELS``) to write as well."""
    root = path or default_bench_dir()
    write_demo_repository(root)
    write_exported(root / "embedder", "embedder", build_embedder(), EMBEDDER_CONFIG,
                   EMBEDDER_VERSION)
    for name in sorted(set(models) & set(OPTIONAL_MODELS)):
        OPTIONAL_MODELS[name](root / name)
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
