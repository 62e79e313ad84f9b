"""The models ModelMesh placed on this runtime: loading, unloading, sizing, purging.

One :class:`ModelMeshModels` per process, called on the event loop thread by the gRPC edge
(``runtime.modelmesh.servicer``). Models are served by the engine under their ModelMesh id;
the torch work of a load runs on a worker thread of its own pool.

Guarantees:

- A load that would not fit in the memory left is refused before anything is read
  (InsufficientMemory); so is one whose path is missing or is not a model.
- Memory is reserved for a load while it runs (its predicted size), then the measured size is
  kept; a model whose measured size does not fit after all is discarded.
- ``unload`` is idempotent. An unload (or a purge) that arrives while the model loads marks
  the load: when its thread finishes the result is discarded, the model is never served, and
  its reservation is released. The load's caller gets LoadCancelled.
- ``status`` purges every model, loaded or loading, and reports ready only once no
  abandoned load still runs: ModelMesh asks only when it (re)starts, and a model loaded
  then belongs to a ModelMesh that is gone.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from importlib import metadata

from runtime import errors
from runtime import model_repository as repo
from runtime.engine import Engine, ServedModel
from runtime.modelmesh import memory
from runtime.modelmesh.errors import InsufficientMemory, LoadCancelled
from runtime.modelmesh.loading import source_for

log = logging.getLogger(__name__)

Loader = Callable[[repo.ModelSource], ServedModel]
"""Loads one model (torch work; called on a loading thread)."""


def _version() -> str:
    try:
        return f"deft-{metadata.version('deft')}"
    except metadata.PackageNotFoundError:
        return "deft"


@dataclass(frozen=True)
class ModelMeshOptions:
    """What ``runtimeStatus`` reports, and the limits loads run under."""

    capacity_bytes: int
    max_loading_concurrency: int = 1  # loads profile the model: one at a time disturbs less
    loading_timeout_ms: int = 120_000
    default_model_size_bytes: int = memory.DEFAULT_MODEL_SIZE_BYTES
    runtime_version: str = field(default_factory=_version)

    def __post_init__(self) -> None:
        if self.default_model_size_bytes > self.capacity_bytes:  # a small budget
            object.__setattr__(self, "default_model_size_bytes", self.capacity_bytes)


@dataclass(frozen=True)
class Status:
    ready: bool
    options: ModelMeshOptions


@dataclass(eq=False)
class _Slot:
    model_id: str
    bytes: int  # reserved while loading, measured once loaded
    loaded: bool = False
    cancelled: bool = False
    task: asyncio.Future[int] | None = None


def _mb(n: int) -> str:
    return f"{n / memory.MIB:.1f} MiB"


class ModelMeshModels:
    """Loads and unloads models for ModelMesh, keeps their memory within the capacity."""

    def __init__(
        self,
        engine: Engine,
        loader: Loader,
        options: ModelMeshOptions,
        *,
        on_loaded: Callable[[str], None] | None = None,
        on_unloaded: Callable[[str], None] | None = None,
        sizer: Callable[[ServedModel], int] | None = None,
    ) -> None:
        self._engine = engine
        self._loader = loader
        self.options = options
        self._on_loaded = on_loaded
        self._on_unloaded = on_unloaded
        self._sizer = sizer or (lambda s: memory.with_margin(memory.tensor_bytes(s.segmented)))
        self._slots: dict[str, _Slot] = {}
        self._abandoned: set[_Slot] = set()  # unloaded while loading, still running
        self._pool = ThreadPoolExecutor(
            max_workers=options.max_loading_concurrency, thread_name_prefix="modelmesh-load"
        )

    # -- state -----------------------------------------------------------------------------

    @property
    def used_bytes(self) -> int:
        """Memory held or reserved by models, including loads that were abandoned."""
        return sum(s.bytes for s in self._slots.values()) + sum(s.bytes for s in self._abandoned)

    def loaded(self) -> list[str]:
        return sorted(i for i, s in self._slots.items() if s.loaded)

    def loading(self) -> list[str]:
        return sorted(i for i, s in self._slots.items() if not s.loaded)

    @property
    def abandoned(self) -> int:
        return len(self._abandoned)

    # -- loading ---------------------------------------------------------------------------

    def predict_size(self, model_id: str, model_path: str, model_key: str = "") -> int:
        """A conservative size for a model not loaded yet; never fails, returns at once.

        The model file's size when it is on the pod already, else the ``disk_size_bytes``
        ModelMesh puts in ``model_key``, else the default model size; plus the margin.
        """
        try:
            return _predicted(source_for(model_id, model_path))
        except (errors.DeftError, OSError):
            pass
        disk = _disk_size(model_key)
        if disk is not None:
            return memory.with_margin(disk)
        return self.options.default_model_size_bytes

    async def load(self, model_id: str, model_path: str, model_key: str = "") -> int:
        """Load the model and serve it under ``model_id``; returns its size in bytes.

        A second load of a model that is loaded or loading answers as the first one does.
        Raises ModelFilesMissing, InvalidInput, InsufficientMemory (nothing was tried),
        ModelLoadError (the files are not a model this runtime can serve), LoadCancelled, or
        whatever the loader raised unexpectedly.
        """
        slot = self._slots.get(model_id)
        if slot is None:
            source = source_for(model_id, model_path)
            predicted = _predicted(source)
            self._check_fits(model_id, predicted, self.used_bytes)
            slot = _Slot(model_id, predicted)
            self._slots[model_id] = slot
            slot.task = asyncio.ensure_future(self._load(slot, source))
            slot.task.add_done_callback(_retrieve)
            log.info("loading model %s from %s (about %s)", model_id, model_path, _mb(predicted))
        assert slot.task is not None
        # the load runs to its end even when ModelMesh cancels this call
        return await asyncio.shield(slot.task)

    def _check_fits(self, model_id: str, size: int, used: int) -> None:
        capacity = self.options.capacity_bytes
        if used + size > capacity:
            raise InsufficientMemory(
                f"model '{model_id}' needs about {_mb(size)}; {_mb(max(capacity - used, 0))} "
                f"of {_mb(capacity)} is free"
            )

    async def _load(self, slot: _Slot, source: repo.ModelSource) -> int:
        loop = asyncio.get_running_loop()
        try:
            served = await loop.run_in_executor(self._pool, self._loader, source)
            if slot.cancelled:
                raise LoadCancelled(f"model '{slot.model_id}' was unloaded while it loaded")
            size = self._sizer(served)
            self._check_fits(slot.model_id, size, self.used_bytes - slot.bytes)
        except BaseException as exc:
            self._forget(slot)
            log.warning("model %s did not load: %s", slot.model_id, exc)
            raise
        # no await from the cancelled check to here: an unload cannot slip in between
        self._engine.add_served(served)
        slot.bytes, slot.loaded = size, True
        if self._on_loaded is not None:
            self._on_loaded(slot.model_id)
        log.info("model %s loaded: %s", slot.model_id, _mb(size))
        return size

    def _forget(self, slot: _Slot) -> None:
        self._abandoned.discard(slot)
        if self._slots.get(slot.model_id) is slot:
            del self._slots[slot.model_id]

    # -- unloading -------------------------------------------------------------------------

    async def unload(self, model_id: str) -> None:
        """Stop serving the model and free it; nothing to do for an unknown id."""
        slot = self._slots.pop(model_id, None)
        if slot is None:
            return
        if not slot.loaded:
            slot.cancelled = True
            self._abandoned.add(slot)
            log.info("model %s unloaded while loading: its load will be discarded", model_id)
            return
        await self._engine.unload(model_id)
        if self._on_unloaded is not None:
            self._on_unloaded(model_id)
        log.info("model %s unloaded", model_id)

    async def size(self, model_id: str) -> int:
        """The size of a loaded model (waits for one that is loading)."""
        slot = self._slots.get(model_id)
        if slot is None:
            raise errors.ModelNotFound(model_id)
        if not slot.loaded and slot.task is not None:
            return await asyncio.shield(slot.task)
        return slot.bytes

    async def status(self) -> Status:
        """Purge every model, then say whether the runtime is ready for ModelMesh."""
        purged = list(self._slots)
        for model_id in purged:
            await self.unload(model_id)
        if purged:
            log.info("purged %d models for a (re)starting ModelMesh: %s", len(purged), purged)
        ready = not self._abandoned and self._engine.ready()
        return Status(ready, self.options)

    async def settle(self) -> None:
        """Wait until every abandoned load has ended and its result is discarded."""
        tasks = [s.task for s in self._abandoned if s.task is not None]
        if tasks:
            await asyncio.wait(tasks)  # unlike gather, never cancels them

    def close(self) -> None:
        """Stop the loading threads once they finish (loads still running are abandoned)."""
        for slot in self._slots.values():
            slot.cancelled = True
        self._pool.shutdown(wait=False, cancel_futures=True)


def _predicted(source: repo.ModelSource) -> int:
    return memory.with_margin(memory.file_bytes(source.model_file or source.directory))


def _retrieve(task: asyncio.Future[int]) -> None:
    # the caller may have gone (a cancelled RPC); the failure was logged already
    if not task.cancelled():
        task.exception()


def _disk_size(model_key: str) -> int | None:
    try:
        value = json.loads(model_key).get("disk_size_bytes") if model_key else None
    except (ValueError, AttributeError):
        return None
    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        return value
    return None
