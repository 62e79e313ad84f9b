"""Built-in demo models, written as an ordinary model repository.

Two deterministic models (fixed seeds, nothing downloaded) whose configurations live in
``config/demo/<name>.yaml``:

- ``detector``: latency-critical, a small CNN over 1x3x96x96 images returning ``boxes``
  [N, 16, 4] and ``scores`` [N, 16] (about 1-3 ms per image on a small CPU).
- ``classifier``: batch, a ResNet-style CNN (residual blocks) over Nx3x224x224 images
  returning ``logits`` [N, 1000], batches of up to 8 (a batch of 8 takes tens of times the
  detector's single image).

:func:`write_demo_repository` exports both with ``torch.export`` (a dynamic batch dimension
up to ``max_batch_size``) into ``<path>/<name>/model.pt2`` next to a copy of the config, so
the demo loads through the same repository path as any other model. A folder already
written for the same torch version, config and demo code is left as it is, which makes
restarts fast.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
from collections.abc import Callable
from pathlib import Path

import torch
import yaml
from torch import nn

from runtime.model_repository import CONFIG_FILE, ModelConfig

log = logging.getLogger(__name__)

# the repository's config/ folder; an installed copy (the image) names it in DEFT_CONFIG_DIR
DEMO_CONFIG_DIR = (
    Path(os.environ.get("DEFT_CONFIG_DIR", Path(__file__).resolve().parent.parent / "config"))
    / "demo"
)
DEMO_MODELS = ("detector", "classifier")
DEMO_VERSION = 3  # bump when a model definition changes, so written folders are re-exported
_STAMP = ".deft-demo.json"


def _conv_bn(cin: int, cout: int, kernel: int, stride: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, kernel, stride, kernel // 2, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    )


class Detector(nn.Module):
    """A small single-shot detector: a strided CNN and a head predicting per-anchor boxes
    (normalised corner coordinates) and scores."""

    def __init__(self, widths: tuple[int, ...] = (32, 64, 128, 128), anchors: int = 16) -> None:
        super().__init__()
        self.anchors = anchors
        layers, cin = [], 3
        for width in widths:
            layers.append(_conv_bn(cin, width, 3, 2))
            cin = width
        self.backbone = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(2)
        self.head = nn.Linear(cin * 4, anchors * 5)

    def forward(self, image: torch.Tensor) -> dict[str, torch.Tensor]:
        features = self.pool(self.backbone(image)).flatten(1)
        raw = self.head(features).view(-1, self.anchors, 5)
        return {"boxes": torch.sigmoid(raw[..., :4]), "scores": torch.sigmoid(raw[..., 4])}


class BasicBlock(nn.Module):
    """Two 3x3 convolutions with a residual connection (a 1x1 projection when the shape
    changes), as in ResNet-18."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(
                nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        return torch.relu(y + self.shortcut(x))


class Classifier(nn.Module):
    """A ResNet-18-shaped classifier with narrower stages (56-112-224-448 channels)."""

    def __init__(
        self,
        widths: tuple[int, ...] = (56, 112, 224, 448),
        blocks: tuple[int, ...] = (2, 2, 2, 2),
        classes: int = 1000,
    ) -> None:
        super().__init__()
        # A strided convolution where ResNet max-pools: CPU max_pool2d on NCHW tensors is one
        # slow op (tens of ms at batch 8) that no sync point could split.
        self.stem = nn.Sequential(
            _conv_bn(3, widths[0], 7, 2),
            _conv_bn(widths[0], widths[0], 3, 2),
        )
        layers: list[nn.Module] = []
        cin = widths[0]
        for stage, (width, count) in enumerate(zip(widths, blocks, strict=True)):
            for i in range(count):
                layers.append(BasicBlock(cin, width, 2 if stage > 0 and i == 0 else 1))
                cin = width
        self.stages = nn.Sequential(*layers)
        self.fc = nn.Linear(cin, classes)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        x = self.stages(self.stem(image))
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))


_BUILDERS: dict[str, Callable[[], nn.Module]] = {"detector": Detector, "classifier": Classifier}


def build_model(name: str, seed: int = 0) -> nn.Module:
    """The demo model ``name`` in eval mode, with weights drawn from ``seed``."""
    if name not in _BUILDERS:
        raise KeyError(f"no demo model {name!r}; choose from {list(_BUILDERS)}")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = _BUILDERS[name]()
    return model.eval()


def demo_config_text(name: str, config_dir: Path = DEMO_CONFIG_DIR) -> str:
    path = config_dir / f"{name}.yaml"
    try:
        return path.read_text(encoding="utf-8")
    except OSError as exc:
        raise FileNotFoundError(f"demo config {path} is missing: {exc}") from exc


def export_model(name: str, config: ModelConfig) -> torch.export.ExportedProgram:
    """``torch.export`` of the demo model, dynamic in the batch dimension up to the config's
    ``max_batch_size``."""
    model = build_model(name)
    example = config.example_inputs(min(2, config.max_batch_size))
    dynamic = None
    if config.max_batch_size > 1:
        batch = torch.export.Dim("batch", min=1, max=config.max_batch_size)
        dynamic = {spec.name: {0: batch} for spec in config.inputs}
    with torch.no_grad():
        return torch.export.export(model, (), kwargs=example, dynamic_shapes=dynamic)


def default_demo_dir() -> Path:
    """``$DEFT_CACHE_DIR/demo-models``, or ``~/.cache/deft/demo-models``."""
    root = os.environ.get("DEFT_CACHE_DIR")
    base = Path(root) if root else Path.home() / ".cache" / "deft"
    return base / "demo-models"


def write_demo_repository(
    path: str | Path | None = None, *, config_dir: Path = DEMO_CONFIG_DIR
) -> Path:
    """Write the demo models as a model repository under ``path`` and return ``path``.

    Each model gets ``<path>/<name>/model.pt2`` and ``config.yaml``. A folder whose stamp
    matches (torch version, config text, demo version) is kept without exporting again.
    """
    root = Path(path) if path is not None else default_demo_dir()
    for name in DEMO_MODELS:
        text = demo_config_text(name, config_dir)
        config = ModelConfig.from_dict(name, yaml.safe_load(text))
        folder = root / name
        stamp = {
            "demo_version": DEMO_VERSION,
            "torch": torch.__version__,
            "config_sha256": hashlib.sha256(text.encode()).hexdigest(),
        }
        if (folder / "model.pt2").is_file() and _read_stamp(folder) == stamp:
            continue
        folder.mkdir(parents=True, exist_ok=True)
        log.info("exporting demo model %s to %s", name, folder)
        program = export_model(name, config)
        atomic_write(folder / "model.pt2", functools.partial(_save_program, program))
        atomic_write(folder / CONFIG_FILE, functools.partial(_save_text, text))
        atomic_write(folder / _STAMP, functools.partial(_save_text, json.dumps(stamp)))
    return root


def _save_program(program: torch.export.ExportedProgram, path: Path) -> None:
    torch.export.save(program, path)


def _save_text(text: str, path: Path) -> None:
    path.write_text(text, encoding="utf-8")


def _read_stamp(folder: Path) -> dict[str, object] | None:
    try:
        data = json.loads((folder / _STAMP).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def atomic_write(target: Path, write: Callable[[Path], object]) -> None:
    # written under its own name (torch.export.save names the archive's entries after the
    # file: the same model gives the same bytes, and so the same profile cache key) in a
    # hidden folder (no repository lists it), then moved into place
    folder = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    folder.mkdir(exist_ok=True)
    tmp = folder / target.name
    try:
        write(tmp)
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)
        folder.rmdir()
