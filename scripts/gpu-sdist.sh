#!/usr/bin/env bash
# Make what scripts/gpu-check.sh needs on a GPU machine that cannot reach PyPI: a
# llama-cpp-python source archive trimmed to what a CUDA (and CPU) build compiles, and
# with --bundle the Python wheels and the bundled model packages, in parts small enough
# to carry one at a time (a carry holds 64 MiB).
#
# Usage: scripts/gpu-sdist.sh [--from SDIST] [--out DIR] [--cuda-wheel WHEEL] [--bundle]
#
#   --from SDIST  start from this llama-cpp-python sdist (default: download the version
#                 installed in .venv from PyPI)
#   --out DIR     where to write (default: build/gpu; build/ is git-ignored)
#   --cuda-wheel WHEEL  a llama-cpp-python wheel built with CUDA for the GPU machine
#                 (scripts/cuda_wheel.py build): gpu-check.sh installs it instead of
#                 compiling the CUDA kernels there (~85 CPU-minutes). Slimmed (each
#                 library once, scripts/cuda_wheel.py slim) into DIR/cuda-wheel/, or with
#                 --bundle into the carried wheels.
#   --bundle      also download, for the GPU machine's Python (3.12, manylinux x86_64),
#                 the wheels of the appliance's dependencies and the bundled model
#                 packages, and lay everything out as DIR/carry-1, carry-2, ... (each at
#                 most PART_MIB: the 64 MiB a carry holds less the working tree that
#                 travels with it and 2 MiB). Carry them one call after another to a
#                 warm machine (ignored paths stay there between calls), then run
#                 scripts/gpu-check.sh in the last call: it puts the pieces together.
#
# The full sdist is 76 MB (73 MB of it llama.cpp's model vocabularies, docs, tests,
# examples, the web UI's sources and the other GPU backends); trimmed it is 6 MB. Dropped:
# vendor/llama.cpp/{models,docs,media,tests,benches,examples,pocs,app,conversion,gguf-py,
# grammars,requirements,...}, scripts/ but ui-assets.cmake, tools/ui/ but its CMake files,
# ggml/src/ggml-* except ggml-cpu and ggml-cuda, and the Python package's own docs,
# examples, tests, docker and its copy of llama.cpp's git history (.git, 38 MB). Kept for
# scripts/bench/llama_server.py: tools/ (llama-server and the small tools its CMake adds).
set -euo pipefail
cd "$(dirname "$0")/.."

FROM=
OUT=build/gpu
CUDA_WHEEL=
BUNDLE=0
CARRY_MIB=64
PART_MIB=${PART_MIB:-$((CARRY_MIB - ($(git ls-files -z | xargs -0 cat | wc -c) >> 20) - 3))}
SDIST_LIMIT_MIB=16
while [ $# -gt 0 ]; do
  case "$1" in
    --from) FROM=$2; shift ;;
    --out) OUT=$2; shift ;;
    --cuda-wheel) CUDA_WHEEL=$2; shift ;;
    --bundle) BUNDLE=1 ;;
    -h | --help) sed -n '2,24p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "gpu-sdist.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
  shift
done
if [ -n "$CUDA_WHEEL" ] && [ ! -f "$CUDA_WHEEL" ]; then
  echo "gpu-sdist.sh: no such wheel: $CUDA_WHEEL" >&2
  exit 2
fi

PY=${PYTHON:-.venv/bin/python}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT

if [ -z "$FROM" ]; then
  version=$("$PY" -c 'import importlib.metadata as m; print(m.version("llama_cpp_python"))')
  echo "==> downloading the llama-cpp-python $version sdist"
  "$PY" -m pip download --quiet --no-deps --no-binary :all: "llama-cpp-python==$version" -d "$WORK"
  FROM=$(echo "$WORK"/llama_cpp_python-*.tar.gz)
fi
tar -xzf "$FROM" -C "$WORK"
SRC=$(echo "$WORK"/llama_cpp_python-*/)
SRC=${SRC%/}
NAME=$(basename "$SRC")
echo "==> trimming $NAME ($(du -m "$FROM" | cut -f1) MB)"
rm -rf "${SRC:?}"/{docs,examples,tests,docker,.git,.github}
LLAMA=$SRC/vendor/llama.cpp
keep_top=" CMakeLists.txt cmake common ggml include licenses src vendor tools LICENSE README.md "
# Of scripts/, only what the build of llama-server runs (scripts/bench/vs_llama_server.py).
[ ! -e "$LLAMA/scripts/ui-assets.cmake" ] || mv "$LLAMA/scripts/ui-assets.cmake" "$WORK/"
for entry in "$LLAMA"/* "$LLAMA"/.[!.]*; do
  [ -e "$entry" ] || continue
  case "$keep_top" in *" $(basename "$entry") "*) ;; *) rm -rf "$entry" ;; esac
done
[ ! -e "$WORK/ui-assets.cmake" ] || { mkdir "$LLAMA/scripts" && mv "$WORK/ui-assets.cmake" "$LLAMA/scripts/"; }
# tools/ stays (llama-server and the small tools its CMake file adds), but not the
# sources of llama-server's web UI (built with npm or downloaded; the benchmark builds
# llama-server without it).
[ ! -d "$LLAMA/tools/ui" ] || find "$LLAMA/tools/ui" -mindepth 1 -maxdepth 1 ! -name CMakeLists.txt ! -name '*.in' -exec rm -rf {} +
for entry in "$LLAMA"/ggml/src/ggml-*/; do
  case "$(basename "$entry")" in ggml-cpu | ggml-cuda) ;; *) rm -rf "$entry" ;; esac
done
TRIMMED=$OUT/$NAME-cuda.tar.gz
tar -C "$WORK" -czf "$TRIMMED" "$NAME"
size=$(du -m "$TRIMMED" | cut -f1)
echo "    $TRIMMED: $size MB"
if [ "$size" -gt "$SDIST_LIMIT_MIB" ]; then
  echo "gpu-sdist.sh: the trimmed sdist is $size MB, over $SDIST_LIMIT_MIB MB" >&2
  exit 1
fi
if [ "$BUNDLE" = 0 ]; then
  [ -z "$CUDA_WHEEL" ] || "$PY" scripts/cuda_wheel.py slim "$CUDA_WHEEL" --out "$OUT/cuda-wheel"
  exit 0
fi

echo "==> wheels for Python 3.12 (manylinux x86_64): the appliance's dependencies"
WHEELS=$WORK/wheels
mkdir -p "$WHEELS"
platforms=()
for n in 2_39 2_35 2_34 2_31 2_28 2_27 2_24 2_17 2014 1; do
  case "$n" in 2014 | 1) platforms+=(--platform "manylinux${n}_x86_64") ;; *) platforms+=(--platform "manylinux_${n}_x86_64") ;; esac
done
deps=$("$PY" - <<'EOF'
import tomllib
project = tomllib.load(open("pyproject.toml", "rb"))["project"]
wanted = [d for d in project["dependencies"] if not d.startswith("llama-cpp-python")]
# gpu-check.sh installs the appliance without build isolation: its build backend too.
wanted += tomllib.load(open("pyproject.toml", "rb"))["build-system"]["requires"]
# What the inference tests need, and llama-cpp-python's one dependency the image lacks.
wanted += project["optional-dependencies"]["inference-tests"] + ["diskcache>=5.6.1"]
print("\n".join(wanted))
EOF
)
mapfile -t dep_list <<<"$deps"
"$PY" -m pip download --quiet --only-binary=:all: --python-version 3.12 --implementation cp \
  "${platforms[@]}" --platform any -d "$WHEELS" "${dep_list[@]}"
models=$("$PY" -c 'from appliance.inference.models import MODEL_PACKAGES; print(" ".join(MODEL_PACKAGES))')
# shellcheck disable=SC2086
"$PY" -m pip download --quiet --no-deps --only-binary=:all: -d "$WHEELS" $models
[ -z "$CUDA_WHEEL" ] || "$PY" scripts/cuda_wheel.py slim "$CUDA_WHEEL" --out "$WHEELS"

echo "==> carry parts of at most $PART_MIB MiB in $OUT"
rm -rf "$OUT"/carry-*
STAGE=$WORK/stage
mkdir -p "$STAGE"
cp "$TRIMMED" "$STAGE/"
(cd "$WHEELS" && tar -cf "$STAGE/wheels.tar" .)
(cd "$STAGE" && split -b "${PART_MIB}m" -d -a 2 wheels.tar wheels.tar.part- && rm wheels.tar)
part=1
used=0
limit=$((PART_MIB * 1024 * 1024))
# The wheel parts first, then the small sdist: it goes into the last part's room.
for file in "$STAGE"/wheels.tar.part-* "$STAGE/$(basename "$TRIMMED")"; do
  bytes=$(stat -c %s "$file")
  if [ $((used + bytes)) -gt "$limit" ] && [ "$used" -gt 0 ]; then
    part=$((part + 1))
    used=0
  fi
  mkdir -p "$OUT/carry-$part"
  mv "$file" "$OUT/carry-$part/"
  used=$((used + bytes))
done
du -sh "$OUT"/carry-*
echo "Carry build/gpu/carry-1 .. carry-$part one per call (each call: carry [\"build/gpu/carry-N\"]);"
echo "in the last one run: OUT=\$OUT scripts/gpu-check.sh"
