"""How much memory the runtime offers ModelMesh, and how much each model takes of it.

- Capacity: on CUDA a fraction of the device's total memory (``torch.cuda.mem_get_info``),
  the rest left to activations, the CUDA context and the allocator's slack; on a CPU the
  configured budget (``--memory_budget_mb``, default :data:`DEFAULT_CPU_BUDGET_MB`). A budget
  given on CUDA replaces the fraction (never above the device's total), so one GPU can be
  shared with something else.
- A loaded model's size: the bytes of its parameters and buffers (every distinct tensor
  storage the served model holds) plus a margin for the activations it needs while it runs.
- A model not yet loaded: its model file's size plus the same margin. A ``.pt2`` or ``.pt``
  archive stores the weights uncompressed, so the file is never smaller than the weights.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Iterator
from pathlib import Path

import torch

MIB = 1024 * 1024
DEFAULT_CPU_BUDGET_MB = 4096.0
CUDA_FRACTION = 0.8
MARGIN_FRACTION = 0.2
MIN_MARGIN_BYTES = 1 * MIB
DEFAULT_MODEL_SIZE_BYTES = 256 * MIB


def capacity_bytes(device: torch.device, budget_mb: float | None = None) -> int:
    """The memory ModelMesh may fill with models on ``device``."""
    budget = int(budget_mb * MIB) if budget_mb is not None else None
    if device.type == "cuda":
        _, total = torch.cuda.mem_get_info(device)
        return min(budget, total) if budget is not None else int(total * CUDA_FRACTION)
    return budget if budget is not None else int(DEFAULT_CPU_BUDGET_MB * MIB)


def with_margin(raw_bytes: int) -> int:
    """A model's size as ModelMesh accounts it: its weights plus room to run."""
    return raw_bytes + max(int(raw_bytes * MARGIN_FRACTION), MIN_MARGIN_BYTES)


def file_bytes(path: Path) -> int:
    """The size of a model file, or of every file under a folder."""
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def tensor_bytes(root: object) -> int:
    """Bytes of the distinct tensor storages reachable from ``root``.

    Followed: every module's parameters, buffers and tensor attributes; an exported
    program's state dict and constants; closures, bound methods and ``functools.partial``;
    lists, tuples, sets and dict values; and the instance attributes of the project's own
    objects (``runtime.*``, ``scheduler.*``), such as a segmented model and its units. A
    storage that several tensors share counts once; meta tensors count nothing. Other objects
    are not entered, so graphs and their fake tensors are never walked.
    """
    storages: dict[tuple[str, int], int] = {}
    seen: set[int] = set()
    stack: list[object] = [root]
    while stack:
        obj = stack.pop()
        if id(obj) in seen:
            continue
        seen.add(id(obj))
        if isinstance(obj, torch.Tensor):
            _count_storage(obj, storages)
        else:
            stack.extend(_children(obj))
    return sum(storages.values())


def _count_storage(tensor: torch.Tensor, storages: dict[tuple[str, int], int]) -> None:
    if tensor.device.type == "meta":
        return
    try:
        storage = tensor.untyped_storage()
        key = (str(storage.device), storage.data_ptr())
        size = storage.nbytes()
    except (RuntimeError, NotImplementedError):  # tensor subclasses without real storage
        return
    if key[1] != 0:
        storages[key] = max(storages.get(key, 0), size)


def _children(obj: object) -> Iterator[object]:
    if isinstance(obj, torch.nn.Module):
        for module in obj.modules():
            yield from module.parameters(recurse=False)
            yield from module.buffers(recurse=False)
            yield from (v for v in vars(module).values() if isinstance(v, torch.Tensor))
    elif isinstance(obj, torch.export.ExportedProgram):
        yield from obj.state_dict.values()
        yield from obj.constants.values()
        yield obj.graph_module
    elif isinstance(obj, (list, tuple, set, frozenset)):
        yield from obj
    elif isinstance(obj, dict):
        yield from obj.values()
    elif isinstance(obj, functools.partial):
        yield obj.func
        yield from obj.args
        yield from obj.keywords.values()
    elif inspect.ismethod(obj):
        yield obj.__self__
        yield obj.__func__
    elif inspect.isfunction(obj):
        for cell in obj.__closure__ or ():
            try:
                yield cell.cell_contents
            except ValueError:  # an empty cell
                continue
    elif type(obj).__module__.startswith(("runtime.", "scheduler.")) and hasattr(obj, "__dict__"):
        yield from vars(obj).values()
