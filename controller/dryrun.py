"""``python -m controller --dry-run -f FILE``: what the controller would write, no cluster.

Reads multi-document YAML (``kind: List`` documents are unpacked), reconciles the KServe
objects in it exactly as the running controller would, and renders the result as YAML: the
Events as comment lines first, then one ConfigMap document per namespace, so the output can
be read, diffed, or piped into ``kubectl apply -f -``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import yaml

from controller.errors import InputError, MalformedObject
from controller.objects import KServeObject, Selection, parse_object
from controller.reconcile import Desired, Observed, reconcile


@dataclass(frozen=True)
class DryRunResult:
    desired: Desired
    objects: tuple[KServeObject, ...]
    skipped: tuple[str, ...]

    def render(self, source: str) -> str:
        return render(self, source)


def load_documents(text: str, source: str) -> list[object]:
    """The documents of ``text`` (empty ones dropped, Lists unpacked). Raises ``InputError``
    with a one-line message on invalid YAML."""
    try:
        documents = [d for d in yaml.safe_load_all(text) if d is not None]
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or type(exc).__name__
        raise InputError(f"{source}: invalid YAML{where}: {problem}") from None
    out: list[object] = []
    for doc in documents:
        if isinstance(doc, Mapping) and doc.get("kind") == "List":
            items = doc.get("items")
            out.extend(items if isinstance(items, list) else [])
        else:
            out.append(doc)
    return out


def dry_run(
    inputs: Sequence[tuple[str, str]],
    *,
    namespace: str | None = None,
    selection: Selection | None = None,
) -> DryRunResult:
    """Reconcile the objects of every ``(text, source name)`` in ``inputs``, as if all were
    applied. Objects without a namespace are in ``namespace`` (default ``default``); when
    ``namespace`` is given it always gets a ConfigMap. Raises ``InputError``."""
    objects: list[KServeObject] = []
    skipped: list[str] = []
    for text, source in inputs:
        for index, doc in enumerate(load_documents(text, source), start=1):
            try:
                obj = parse_object(doc, namespace or "default")
            except MalformedObject as exc:
                skipped.append(f"{source} document {index}: {exc}")
                continue
            if obj is not None:
                objects.append(obj)
    observed = Observed(tuple(objects), frozenset([namespace] if namespace else []))
    return DryRunResult(reconcile(observed, selection), tuple(objects), tuple(skipped))


def render(result: DryRunResult, source: str) -> str:
    desired = result.desired
    served = len(result.objects) - len(desired.ignored)
    lines = [
        f"# deft-controller dry run of {source}: {len(result.objects)} KServe objects, "
        f"{served} served by Deft"
    ]
    lines += [
        f"# Event {e.type} {e.reason} on {e.ref}: {e.message}" for e in desired.events
    ]
    lines += [f"# ignored, not served by Deft: {ref}" for ref in desired.ignored]
    lines += [f"# skipped {note}" for note in result.skipped]
    if not desired.configmaps:
        lines.append("# no namespace has a Deft-served object: no ConfigMap would be written")
    text = "\n".join(lines) + "\n"
    for cm in desired.configmaps:
        text += "---\n" + yaml.dump(cm.manifest(), Dumper=_block_dumper(), sort_keys=False)
    return text


def _block_dumper() -> type[yaml.SafeDumper]:
    """A SafeDumper that writes multi-line strings as ``|`` blocks (readable ConfigMaps)."""

    class Dumper(yaml.SafeDumper):
        pass

    def represent_str(dumper: yaml.SafeDumper, data: str) -> Any:
        style = "|" if "\n" in data else None
        return dumper.represent_scalar("tag:yaml.org,2002:str", data, style=style)

    Dumper.add_representer(str, represent_str)
    return Dumper
