#!/usr/bin/env bash
# Wheels that let the suite (and the runtime) run on a GPU host that has no network access
# but whose Python already holds a CUDA build of torch, numpy, pandas and matplotlib (a CUDA
# image). Downloads the Python dependencies of pyproject.toml except torch, as wheels for
# that host's Python, and leaves out the large ones such an image provides.
#
#   bash e2e/bench/offline_kit.sh [DIR]        # default DIR: .gpu-kit (git-ignored)
#   PY_VERSION=3.11 bash e2e/bench/offline_kit.sh
#
# Then on the GPU host, from a copy of this repository with DIR in it:
#
#   OFFLINE_KIT=.gpu-kit bash e2e/bench/gpu.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
KIT="${1:-.gpu-kit}"
PY_VERSION="${PY_VERSION:-3.12}"
PY="${PY:-.venv/bin/python}"
[ -x "$PY" ] || PY=python3
# on the image already, and best left as its own build: its torch was built with its numpy
PROVIDED="${PROVIDED:-numpy pandas pillow ml_dtypes matplotlib contourpy uvloop setuptools pytz tzdata}"

requirements=$("$PY" - <<'EOF'
import tomllib
with open("pyproject.toml", "rb") as f:
    deps = tomllib.load(f)["project"]["dependencies"]
print("\n".join(d for d in deps if not d.replace(" ", "").startswith("torch")))
EOF
)
platforms=()
for tag in manylinux_2_17 manylinux_2_24 manylinux_2_27 manylinux_2_28 manylinux_2_31 \
           manylinux_2_34 manylinux_2_35 manylinux2014 manylinux1; do
  platforms+=(--platform "${tag}_x86_64")
done
rm -rf "$KIT"
mkdir -p "$KIT"
# shellcheck disable=SC2086
"$PY" -m pip download -q --only-binary=:all: --python-version "$PY_VERSION" \
  --implementation cp "${platforms[@]}" -d "$KIT" $requirements
for name in $PROVIDED; do
  rm -f "$KIT/$name"-[0-9]*.whl
done
echo "offline_kit: $(ls "$KIT" | wc -l) wheels for Python $PY_VERSION in $KIT ($(du -sh "$KIT" | cut -f1))"
