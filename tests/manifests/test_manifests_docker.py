"""The Dockerfiles (they cannot be built here, so their shape is checked): multi-stage, a
non-root USER in the final stage, no compilers there, the right entry point."""

from __future__ import annotations

import json
import re

import pytest
from deft_manifest_support import ROOT, all_documents

DOCKER = ROOT / "docker"
IMAGES = {
    "runtime.Dockerfile": ["python", "-m", "runtime"],
    "controller.Dockerfile": ["python", "-m", "controller"],
}
COMPILERS = re.compile(r"\b(build-essential|gcc|g\+\+|clang|make|python3-dev)\b")


def instructions(path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with line continuations joined and comments dropped."""
    out: list[tuple[str, str]] = []
    pending = ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if line.startswith("#"):
            continue
        pending += " " + line
        if pending.endswith("\\"):
            pending = pending[:-1]
            continue
        word, _, rest = pending.strip().partition(" ")
        out.append((word.upper(), rest.strip()))
        pending = ""
    return out


def stages(path) -> list[list[tuple[str, str]]]:
    result: list[list[tuple[str, str]]] = []
    for ins in instructions(path):
        if ins[0] == "FROM":
            result.append([])
        if result:
            result[-1].append(ins)
    return result


@pytest.mark.parametrize("name", sorted(IMAGES))
def test_final_stage_runs_as_a_non_root_user(name):
    final = stages(DOCKER / name)[-1]
    users = [args for word, args in final if word == "USER"]
    assert users, "the final stage sets no USER"
    user = users[-1].split(":")[0]
    assert user not in ("root", "0") and user.isdigit(), "use a numeric non-root UID"
    last_user = max(i for i, (w, _) in enumerate(final) if w == "USER")
    assert all(w != "RUN" for w, _ in final[last_user:]), "RUN after USER runs as that user"


@pytest.mark.parametrize("name", sorted(IMAGES))
def test_multi_stage_with_base_image_argument(name):
    path = DOCKER / name
    all_stages = stages(path)
    assert len(all_stages) >= 2
    pre = instructions(path)[0]
    assert pre[0] == "ARG" and pre[1].startswith("BASE_IMAGE=")
    assert all(s[0][1].startswith("${BASE_IMAGE}") for s in all_stages)
    final = all_stages[-1]
    assert any(w == "COPY" and a.startswith("--from=builder") for w, a in final)
    assert not any(w == "RUN" and COMPILERS.search(a) for w, a in final)


@pytest.mark.parametrize("name,entrypoint", sorted(IMAGES.items()))
def test_entrypoint(name, entrypoint):
    final = stages(DOCKER / name)[-1]
    [args] = [a for w, a in final if w == "ENTRYPOINT"]
    assert json.loads(args) == entrypoint


def test_runtime_image_takes_torch_from_a_chosen_index():
    text = (DOCKER / "runtime.Dockerfile").read_text()
    assert "ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu" in text
    assert '--index-url "${TORCH_INDEX}"' in text


def test_controller_image_has_no_torch():
    assert "torch" not in (DOCKER / "controller.Dockerfile").read_text().replace(
        "No torch", "")


def test_image_uid_matches_the_deployment():
    [deployment] = [d for _, d in all_documents() if d["kind"] == "Deployment"]
    uid = deployment["spec"]["template"]["spec"]["securityContext"]["runAsUser"]
    for name in IMAGES:
        user = [a for w, a in stages(DOCKER / name)[-1] if w == "USER"][-1]
        assert user.split(":")[0] == str(uid)


def test_dockerignore_keeps_the_context_small_but_complete():
    ignored = {line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()
               if line.strip() and not line.startswith("#")}
    assert {".git", ".venv", "tests"} <= ignored
    copied = {path for name in IMAGES for w, a in instructions(DOCKER / name)
              if w == "COPY" and not a.startswith("--from") for path in a.split()[:-1]}
    assert {"pyproject.toml", "scheduler", "controller", "runtime"} <= copied
    for path in copied:
        assert path.rstrip("*") not in ignored, path
        # README.md* is optional (a glob): the build does not need the file
        assert "*" in path or (ROOT / path).exists(), path
