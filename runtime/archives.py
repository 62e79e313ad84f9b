"""Safety checks on model archives before torch opens them: loading never unpickles
arbitrary objects (see :mod:`runtime.model_repository`)."""

from __future__ import annotations

import io
import json
import zipfile
from collections.abc import Sequence
from pathlib import Path

import torch

from runtime.errors import ModelLoadError


def _archive_root(names: Sequence[str], marker: str) -> str | None:
    for name in names:
        if name == marker:
            return ""
        if name.endswith("/" + marker) and name.count("/") == marker.count("/") + 1:
            return name[: -len(marker)]
    return None


# torch.export writes its archives uncompressed: an entry that inflates more than this is not
# its
_MAX_INFLATION = 20
_SMALL_ENTRY = 1 << 20


def _check_entries(archive: zipfile.ZipFile, where: str, inflation: bool = True) -> list[str]:
    """The archive's entry names, refused where two name one entry for torch's reader, which
    matches names without regard to case and reads the first of equal ones where Python's
    reads the last (a second entry could hide what the checks below read), or, with
    ``inflation`` (archives torch.export writes, all stored, whose entries the checks read),
    where an entry inflates far beyond its stored size (a zip bomb)."""
    infos = archive.infolist()
    seen: dict[str, str] = {}
    for info in infos:
        key = info.filename.lower()
        if key in seen:
            raise ModelLoadError(f"{where}: refusing an archive with two entries named "
                                 f"{seen[key]!r} and {info.filename!r}")
        seen[key] = info.filename
        if inflation and info.file_size > _MAX_INFLATION * info.compress_size + _SMALL_ENTRY:
            raise ModelLoadError(
                f"{where}: refusing archive entry {info.filename!r}: it inflates from "
                f"{info.compress_size} to {info.file_size} bytes")
    return [info.filename for info in infos]


def _check_weights_only(archive: zipfile.ZipFile, member: str, where: str) -> None:
    try:
        data = archive.read(member)
    except KeyError:
        raise ModelLoadError(f"{where}: archive entry {member!r} is missing") from None
    try:
        torch.load(io.BytesIO(data), weights_only=True, map_location="cpu")
    except Exception as exc:
        raise ModelLoadError(
            f"{where}: refusing archive entry {member!r}: it holds objects beyond tensors "
            f"({type(exc).__name__}); re-export the model with torch.export"
        ) from exc


def check_exported_archive(path: str | Path) -> None:
    """Refuse a ``.pt2`` whose loading could run code other than torch's own.

    ``torch.export.load`` unpickles sample inputs, legacy weight files and weights or
    constants marked ``use_pickle`` with full pickle: each of those entries must load with
    ``torch.load(weights_only=True)``. Opaque and custom objects, compiled code
    (AOTInductor, ExecuTorch, MTIA) and the legacy archive format are refused.
    """
    from torch.export.pt2_archive import constants as pt2

    where = Path(path).name
    if not zipfile.is_zipfile(path):
        raise ModelLoadError(f"{where} is not a torch.export archive (not a zip file)")
    # torch releases before 2.13 lack the opaque-object constant; their archives hold no
    # such entries, but an archive saved by a newer torch may
    objects = (pt2.CUSTOM_OBJ_FILENAME_PREFIX,
               getattr(pt2, "OPAQUE_OBJ_FILENAME_PREFIX", "opaque_obj_"))
    payload_configs = {
        pt2.WEIGHTS_DIR: pt2.WEIGHTS_CONFIG_FILENAME_FORMAT.partition("{}")[2],
        pt2.CONSTANTS_DIR: pt2.CONSTANTS_CONFIG_FILENAME_FORMAT.partition("{}")[2],
    }
    with zipfile.ZipFile(path) as archive:
        names = _check_entries(archive, where)
        root = _archive_root(names, pt2.ARCHIVE_FORMAT_PATH)
        if (
            root is None
            or archive.read(root + pt2.ARCHIVE_FORMAT_PATH).decode(errors="replace").strip()
            != pt2.ARCHIVE_FORMAT_VALUE
        ):
            raise ModelLoadError(
                f"{where} is not a torch.export archive of the current format "
                "(save it with torch.export.save)"
            )
        pickled: set[str] = set()
        for name in (n[len(root) :] for n in names if n.startswith(root)):
            if name.startswith((pt2.AOTINDUCTOR_DIR, pt2.EXECUTORCH_DIR, pt2.MTIA_DIR + "/")):
                raise ModelLoadError(f"{where}: refusing compiled code {name!r}")
            if name.rpartition("/")[2].startswith(objects):
                raise ModelLoadError(f"{where}: refusing opaque Python object {name!r}")
            directory = next((d for d in payload_configs if name.startswith(d)), None)
            if name.startswith(pt2.SAMPLE_INPUTS_DIR) or (directory and name.endswith(".pt")):
                pickled.add(name)
            if directory and name.endswith(payload_configs[directory]):
                try:
                    entries = dict(json.loads(archive.read(root + name)).get("config", {}))
                except (ValueError, TypeError, AttributeError) as exc:
                    raise ModelLoadError(f"{where}: unreadable {name!r}: {exc}") from exc
                for fqn, meta in entries.items():
                    path_name = str(meta.get("path_name", "")) if isinstance(meta, dict) else ""
                    if path_name.startswith(objects):
                        raise ModelLoadError(f"{where}: refusing opaque Python object {fqn!r}")
                    if not isinstance(meta, dict) or meta.get("use_pickle", True):
                        pickled.add(directory + path_name)
        for name in sorted(pickled):
            _check_weights_only(archive, root + name, where)


def check_torchscript_archive(path: str | Path) -> None:
    """Refuse a ``.pt`` that is not a TorchScript archive (e.g. a ``torch.save`` pickle)."""
    where = Path(path).name
    if not zipfile.is_zipfile(path):
        raise ModelLoadError(f"{where} is not a TorchScript archive (not a zip file)")
    with zipfile.ZipFile(path) as archive:
        # torch.jit.save deflates code and debug entries, some many times over; none is read
        names = _check_entries(archive, where, inflation=False)
    has_code = any("/code/" in n or n.startswith("code/") for n in names)
    has_constants = any(n.endswith("constants.pkl") for n in names)
    if not (has_code and has_constants):
        raise ModelLoadError(
            f"refusing {where}: not a TorchScript archive (a torch.save pickle?); save the model "
            "with torch.jit.save or torch.export"
        )
