"""From the path ModelMesh gives ``loadModel`` to a model the engine serves.

ModelMesh's storage helper downloads a model into a folder of its own on the pod
(``/models/<model id>/``) and passes that folder, or the model file in it, as ``modelPath``.
Both are understood:

- a folder: the single-model layout of ``runtime.model_repository`` (``model.pt2`` or
  ``model.pt``, ``config.yaml`` optional), with the files directly in it or in a sub-folder
  named after the model id;
- a model file (``.pt2`` or ``.pt``): that file, with the ``config.yaml`` beside it if any.

Loading is torch work: :func:`load_served` runs in a worker thread, never on the event loop.
"""

from __future__ import annotations

from pathlib import Path

import torch

from runtime import model_repository as repo
from runtime.engine import ServedModel
from runtime.errors import InvalidInput
from runtime.modelmesh.errors import ModelFilesMissing
from runtime.modelmesh.ids import priority_name

MODEL_SUFFIXES = (repo.EXPORTED_SUFFIX, repo.TORCHSCRIPT_SUFFIX)


def source_for(model_id: str, model_path: str) -> repo.ModelSource:
    """The model at ``model_path``, named ``model_id``; cheap (looks at the file system only).

    Raises ModelFilesMissing when the path does not exist and InvalidInput when it names a
    file that is not a model. A folder without a usable model file gives a source whose
    ``problem`` says so; loading it raises ModelLoadError.
    """
    if not model_id:
        raise InvalidInput("the request names no modelId")
    if not model_path:
        raise InvalidInput(f"the request for model '{model_id}' gives no modelPath")
    path = Path(model_path)
    if not path.exists():
        raise ModelFilesMissing(f"model '{model_id}': {model_path!r} does not exist")
    if path.is_dir():
        [source] = repo.discover(path, model_id)
        return source
    config = path.parent / repo.CONFIG_FILE
    config_file = config if config.is_file() else None
    if path.suffix in repo.REFUSED_SUFFIXES:
        problem = (
            f"refusing {path.name}: pickled models can run arbitrary code when loaded; save the "
            "model with torch.export (model.pt2) or TorchScript (model.pt)"
        )
        return repo.ModelSource(model_id, path.parent, None, config_file, problem)
    if path.suffix not in MODEL_SUFFIXES:
        raise InvalidInput(
            f"model '{model_id}': {path.name} is not a model file this runtime loads "
            f"({', '.join(MODEL_SUFFIXES)})"
        )
    return repo.ModelSource(model_id, path.parent, path, config_file)


def load_served(source: repo.ModelSource, device: torch.device) -> ServedModel:
    """Load, split and profile the model; served under its ModelMesh id, prioritised under
    the InferenceService name the id maps to. Raises ModelLoadError with the reason. ModelMesh
    places and replaces these itself: they carry no files stamp, so the repository's load
    never reloads one."""
    served = ServedModel.from_loaded(
        repo.load(source, device), source.name, priority_name(source.name)
    )
    served.stamp = None
    return served
