#!/usr/bin/env bash
# Download (not install) the Python wheels a GPU machine without network lacks, for its
# Python (3.12, x86-64 manylinux), at the versions installed here, so they can be installed
# there from DIR: `python3 -m pip install --no-index --no-deps --target /tmp/site DIR/*`
# (scripts/device/common.sh does it when the run carries them as .whl/).
# Usage: scripts/fetch_device_wheels.sh DIR
#   audio I/O (soundfile, cffi, pycparser, soxr), in-run codec metrics (pesq, pystoi),
#   tokenized data (datasets, dill, multiprocess): what corpus building and every trainer
#   need, 2.7 MB. The offline judges (pocketsphinx, resemblyzer, speechmos: over 60 MB) are
#   not carried: evaluation runs on a CPU machine from the models the GPU runs send back.
# Packages the GPU image already has (numpy, scipy, pyarrow, pandas, xxhash, fsspec, torch,
# transformers, ...) are not fetched. Prints the total size.
set -euo pipefail
DIR=${1:?usage: $0 DIR}
PKGS="soundfile cffi pycparser soxr pesq pystoi datasets dill multiprocess"
PY=${PYTHON:-python3}
mkdir -p "$DIR"
specs=()
for p in $PKGS; do
  v=$($PY -m pip show "$p" 2>/dev/null | awk '/^Version:/{print $2}')
  [ -n "$v" ] || { echo "[fetch_device_wheels] $p is not installed here: run scripts/setup.sh" >&2; exit 1; }
  specs+=("$p==$v")
done
PLAT=()
for n in 2_28 2_27 2_24 2_17 2_5; do PLAT+=(--platform "manylinux_${n}_x86_64"); done
PLAT+=(--platform manylinux2014_x86_64 --platform manylinux1_x86_64 --platform any)
# build_wheel SDIST DIR: a cp312 wheel of a source-only package (pesq: Cython + numpy
# headers), built by a Python 3.12 here (PY312, default python3.12 on PATH or pyenv's) in a
# throwaway venv; the GPU image's own source build of it fails, so no sdist is carried.
# Its C code needs only old glibc symbols, so the linux_x86_64 wheel runs there.
build_wheel() {
  local py=${PY312:-}
  [ -n "$py" ] || py=$(command -v python3.12 2>/dev/null) || true
  [ -n "$py" ] && "$py" -c "" 2>/dev/null \
    || py=$(ls "$HOME"/.pyenv/versions/3.12*/bin/python3.12 2>/dev/null | tail -n 1)
  [ -n "$py" ] || { echo "[fetch_device_wheels] $(basename "$1") has no cp312 wheel and" \
    "no Python 3.12 is here to build one (set PY312)" >&2; return 1; }
  local venv; venv=$(mktemp -d)
  "$py" -m venv "$venv" && "$venv/bin/pip" install -q numpy cython setuptools wheel \
    && "$venv/bin/pip" wheel -q --no-deps --no-build-isolation -w "$2" "$1"
  local rc=$?; rm -rf "$venv"
  [ $rc = 0 ] || echo "[fetch_device_wheels] building a cp312 wheel of $(basename "$1") failed" >&2
  return $rc
}
for s in "${specs[@]}"; do
  # a package without a cp312 wheel of that version (pesq) is built into one here (build_wheel)
  $PY -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
    --implementation cp "${PLAT[@]}" -d "$DIR" "$s" 2>/dev/null && continue
  SRC=$(mktemp -d)
  $PY -m pip download -q --no-deps --no-binary=:all: --no-build-isolation -d "$SRC" "$s" \
    || { echo "[fetch_device_wheels] neither a cp312 x86-64 wheel nor a source of $s" >&2; exit 1; }
  build_wheel "$SRC"/* "$DIR" || exit 1
  rm -rf "$SRC"
done
echo "[fetch_device_wheels] $(ls "$DIR" | wc -l) files, $(du -sh "$DIR" | cut -f1) in $DIR"
