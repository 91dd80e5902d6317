#!/usr/bin/env bash
# The GPU proof, in one run of at most 9 minutes on a machine with an NVIDIA GPU:
#   1. llama-cpp-python with CUDA, into a venv of its own: a prebuilt CUDA wheel when one
#      was carried (made without a GPU by scripts/cuda_wheel.py build, carried by
#      scripts/gpu-sdist.sh --cuda-wheel) and it finds the GPU there, else
#      built from the trimmed sdist (scripts/gpu-sdist.sh) through scripts/llama-build.sh
#      --cuda. A build from source leaves out the flash-attention kernels unless
#      GPU_CHECK_FLASH_ATTN=1: they are 41 % of the CUDA compile, which takes ~85 CPU-minutes
#      in all (measured with nvcc 13.0 on a 2-core AMD EPYC, docs/benchmarks.md), too long
#      for this run's budget on 16 cores with them. Both servers then run without flash
#      attention (llama.cpp's "auto" turns it off where the GPU has no kernel for it);
#   2. install the appliance and the bundled models, `appliance doctor` (the model
#      self-test included);
#   3. llama.cpp's own llama-server, built from the same sdist against the wheel's ggml
#      (scripts/bench/llama_server.py: C++ only, no CUDA kernels compiled again; built
#      during step 2), beside the inference service (scripts/bench/vs_llama_server.py,
#      issue 20's targets);
#   4. the inference and batching benchmarks; every benchmark with --record
#      (docs/benchmarks.md);
#   5. the inference tests (tests/inference).
# Each step gets what is left of the time; results and logs go to $OUT (7 files).
#
# Usage: [OUT=DIR] [GPU_CHECK_SECONDS=540] [GPU_CHECK_FLASH_ATTN=1]
#        [GPU_CHECK_CMAKE_ARGS="-DCMAKE_CUDA_ARCHITECTURES=90"] scripts/gpu-check.sh
#
# Inputs, made beforehand by scripts/gpu-sdist.sh: build/gpu/llama_cpp_python-*-cuda.tar.gz
# (or in build/gpu/carry-*/). Without internet, also the wheels it bundles
# (build/gpu/carry-*/wheels.tar.part-*): pip then installs from them only, with the
# build tools (scikit-build-core, cmake, ninja) and numpy of the machine's own Python
# (the venv sees its site-packages). With internet, pip uses PyPI.
set -uo pipefail
cd "$(dirname "$0")/.." || exit 2

OUT=${OUT:-./gpu-results}
BUDGET=${GPU_CHECK_SECONDS:-540}
WORK=${GPU_CHECK_WORK:-/tmp/appliance-gpu-check}
mkdir -p "$OUT" "$WORK"
OUT=$(cd "$OUT" && pwd)
SUMMARY=$OUT/summary.txt
: >"$SUMMARY"
START=$SECONDS
FAILED=0

say() { echo "$*" | tee -a "$SUMMARY"; }
left() { echo $((BUDGET - (SECONDS - START))); }

# limit MAX_SECONDS: what is left of the budget, at most MAX_SECONDS.
limit() {
  local left_now
  left_now=$(left)
  echo $((left_now < $1 ? left_now : $1))
}
# report NAME LOG BEGAN LIMIT RC: record how a step ended (exit status and time).
report() {
  local name=$1 log=$2 began=$3 limit=$4 rc=$5
  if [ "$rc" = 0 ]; then
    say "ok    $name ($((SECONDS - began)) s)"
  else
    [ "$rc" = 124 ] && rc="124 (timed out after ${limit}s)"
    say "FAIL  $name: exit $rc ($((SECONDS - began)) s), see $(basename "$log")"
    FAILED=1
  fi
  [ "$rc" = 0 ]
}
# step NAME LOG MAX_SECONDS COMMAND...: run with what is left of the budget (at most
# MAX_SECONDS), append its output to LOG, record its exit status and time.
step() {
  local name=$1 log=$2 limit began=$SECONDS
  limit=$(limit "$3")
  shift 3
  if [ "$limit" -lt 20 ]; then
    say "SKIP  $name: out of time"
    FAILED=1
    return 1
  fi
  echo "==> $name (up to ${limit}s): $*" >>"$log"
  timeout --signal=INT --kill-after=15 "$limit" "$@" >>"$log" 2>&1
  report "$name" "$log" "$began" "$limit" $?
}

# -- a GPU, or a clear no --------------------------------------------------------------------
if ! command -v nvidia-smi >/dev/null 2>&1; then
  echo "gpu-check.sh: no NVIDIA GPU here (nvidia-smi not found); nothing was run" | tee "$SUMMARY" >&2
  exit 2
fi
if ! nvidia-smi -L >>"$SUMMARY" 2>&1; then
  echo "gpu-check.sh: nvidia-smi sees no GPU (driver not loaded?); nothing was run" | tee -a "$SUMMARY" >&2
  exit 2
fi
PY=${PYTHON:-python3} # the machine's Python: the venv's base, and where nvidia-* packages are
NVCC=$(command -v nvcc || { [ -x /usr/local/cuda/bin/nvcc ] && echo /usr/local/cuda/bin/nvcc; } || true)
[ -z "$NVCC" ] || PATH="$(dirname "$NVCC"):$PATH"
export PATH
# CUDA's runtime and cuBLAS for a prebuilt wheel (and any build): the toolkit's, then those
# of the nvidia-* packages of the machine's Python.
cuda_lib_dirs() {
  local dir
  if [ -n "$NVCC" ]; then
    for dir in "$(dirname "$NVCC")"/../lib64 "$(dirname "$NVCC")"/../lib; do
      [ ! -d "$dir" ] || (cd "$dir" && pwd)
    done
  fi
  "$PY" -c 'import glob, site
for p in site.getsitepackages(): print("\n".join(sorted(glob.glob(p + "/nvidia/*/lib"))))' 2>/dev/null
}
LD_LIBRARY_PATH=$(cuda_lib_dirs | paste -sd: -)${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
export LD_LIBRARY_PATH
SDIST=$(find build/gpu -name 'llama_cpp_python-*-cuda.tar.gz' 2>/dev/null | sort | tail -n 1)
if [ -z "$SDIST" ]; then
  echo "gpu-check.sh: no trimmed sdist in build/gpu: run scripts/gpu-sdist.sh first" | tee -a "$SUMMARY" >&2
  exit 2
fi
{
  nvidia-smi --query-gpu=name,memory.total,driver_version,compute_cap --format=csv
  if [ -n "$NVCC" ]; then "$NVCC" --version | tail -n 2; else echo "nvcc: none"; fi
  echo "CPU: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2-), $(nproc) CPUs"
  echo "sdist: $SDIST"
} >>"$SUMMARY" 2>&1

SETUP=$OUT/setup.log
VENV=$WORK/venv
step "venv" "$SETUP" 120 "$PY" -m venv "$VENV" || exit 1
# The packages of the Python it was made from (numpy, the build tools) stay visible, after
# the venv's own: a .pth file, because that Python may itself be a venv (whose packages
# --system-site-packages would not show).
"$PY" -c 'import site; print("\n".join(site.getsitepackages()))' \
  >"$("$VENV/bin/python" -c 'import site; print(site.getsitepackages()[0])')/zz-base.pth"
mapfile -t parts < <(find build/gpu -name 'wheels.tar.part-*' 2>/dev/null | awk -F/ '{print $NF " " $0}' | sort | cut -d' ' -f2-)
if [ ${#parts[@]} -gt 0 ]; then
  mkdir -p "$WORK/wheels"
  cat "${parts[@]}" | tar -xf - -C "$WORK/wheels"
  # PIP_NO_BUILD_ISOLATION=0 is how pip spells --no-build-isolation in the environment.
  export PIP_NO_INDEX=1 PIP_FIND_LINKS=$WORK/wheels PIP_NO_BUILD_ISOLATION=0
  say "offline: $(find "$WORK/wheels" -name '*.whl' | wc -l) wheels from ${#parts[@]} part(s)"
fi
# What CMake's FindCUDAToolkit looks for and a toolkit assembled from NVIDIA's pip
# packages may lack (as this workplace's CPU machines' /usr/local/cuda does): link names
# for cuBLAS (the nvidia-cublas package's) and the driver (its libcuda.so.1), and the
# folder of cublas_v2.h. Prints the CMake arguments that point the build at them.
cuda_build_hints() {
  local links=$WORK/cuda-link name found include
  local -a dirs
  mapfile -t dirs < <(cuda_lib_dirs)
  mkdir -p "$links"
  for name in cublas cublasLt; do
    found=$(find "${dirs[@]}" -maxdepth 1 -name "lib$name.so*" 2>/dev/null | sort | head -n 1)
    [ -z "$found" ] || ln -sfn "$found" "$links/lib$name.so"
  done
  found=$(ldconfig -p 2>/dev/null | awk '/libcuda\.so\.1 / {print $NF; exit}')
  [ -n "$found" ] || found=$(find /usr/local/nvidia /usr/lib/x86_64-linux-gnu /usr/lib64 -maxdepth 2 -name libcuda.so.1 2>/dev/null | head -n 1)
  [ -z "$found" ] || ln -sfn "$found" "$links/libcuda.so"
  include=$(for dir in "${dirs[@]}"; do find "${dir%/lib*}/include" -maxdepth 1 -name cublas_v2.h 2>/dev/null; done | head -n 1)
  echo "-DCMAKE_LIBRARY_PATH=$links${include:+ -DCMAKE_CUDA_FLAGS=-I${include%/*}}"
}
has_gpu_offload() {
  "$VENV/bin/python" -c 'import llama_cpp, sys; sys.exit(not llama_cpp.llama_supports_gpu_offload())'
}
# A prebuilt CUDA wheel: in build/gpu/cuda-wheel/, or among the carried wheels (they hold
# no other llama-cpp-python).
WHEEL=$(find build/gpu/cuda-wheel "$WORK/wheels" -name 'llama_cpp_python-*.whl' 2>/dev/null | sort | tail -n 1)
# A second run (the first ran out of time) keeps what the first installed or built, files
# untouched: llama-server's build is cached by them.
if has_gpu_offload >/dev/null 2>&1; then
  say "ok    llama-cpp-python: with GPU offload, from an earlier run in $VENV"
  WHEEL=kept
elif [ -n "$WHEEL" ]; then
  echo "==> the prebuilt wheel $WHEEL" >>"$OUT/build.log"
  if "$VENV/bin/python" -m pip install -q "$WHEEL" >>"$OUT/build.log" 2>&1 && has_gpu_offload >>"$OUT/build.log" 2>&1; then
    say "ok    llama-cpp-python: the prebuilt CUDA wheel $(basename "$WHEEL") (flash-attention kernels in)"
  else
    say "note  the prebuilt wheel $(basename "$WHEEL") finds no GPU here (see build.log): building from source"
    WHEEL=
  fi
fi
if [ -z "$WHEEL" ]; then
  if [ -z "$NVCC" ]; then
    say "stopping: no prebuilt CUDA wheel and no CUDA compiler (nvcc not on PATH nor in /usr/local/cuda/bin)"
    exit 2
  fi
  CMAKE_ARGS=$(scripts/llama-build.sh --print-args --cuda)
  [ "${GPU_CHECK_FLASH_ATTN:-0}" = 1 ] || CMAKE_ARGS="$CMAKE_ARGS -DGGML_CUDA_FA=OFF"
  CMAKE_ARGS="$CMAKE_ARGS $(cuda_build_hints) ${GPU_CHECK_CMAKE_ARGS:-}"
  # Sources and a build folder that outlive the call (pip builds a folder in place; the
  # build folder through --config-settings): offline, without build isolation, a build
  # cut short by the time limit goes on from where it stopped when the check is run again.
  [ -d "$WORK/llama-src" ] || { mkdir -p "$WORK/llama-src" && tar -xzf "$SDIST" -C "$WORK/llama-src"; }
  SOURCES=$(find "$WORK/llama-src" -mindepth 1 -maxdepth 1 -name 'llama_cpp_python-*' | head -n 1)
  export CMAKE_ARGS CMAKE_BUILD_PARALLEL_LEVEL=${CMAKE_BUILD_PARALLEL_LEVEL:-$(nproc)} \
    PIP_CONFIG_SETTINGS="build-dir=$WORK/llama-cpp-build"
  step "build llama-cpp-python (CUDA: $CMAKE_ARGS)" "$OUT/build.log" 420 \
    scripts/llama-build.sh --cuda --sdist "$SOURCES" "$VENV/bin/python" || {
    say "stopping: no CUDA build (run the check again to go on with it)"
    exit 1
  }
  unset CMAKE_ARGS PIP_CONFIG_SETTINGS
fi
# llama-server compiles (C++ on every core, niced) while the appliance is installed and
# its models are made and checked.
SERVER_LIMIT=$(limit 420)
SERVER_BEGAN=$SECONDS
SERVER_BUILD=
if [ "$SERVER_LIMIT" -ge 20 ]; then
  echo "==> llama-server build (up to ${SERVER_LIMIT}s), beside the next three steps" >>"$OUT/build.log"
  timeout --signal=INT --kill-after=15 "$SERVER_LIMIT" \
    "$VENV/bin/python" scripts/bench/llama_server.py "$SDIST" >>"$OUT/build.log" 2>&1 &
  SERVER_BUILD=$!
  # Not left compiling if the check stops before it waits for it.
  trap '[ -z "$SERVER_BUILD" ] || kill -INT "$SERVER_BUILD" 2>/dev/null' EXIT
fi

models=$(sed -n 's/^MODEL_PACKAGES = (\(.*\))$/\1/p' appliance/inference/models.py | tr -d '",')
# Without build isolation the build backend (setuptools) must be in the venv first: the
# machine's own may be older than pyproject.toml asks (the bundle carries it).
build_requires=$("$VENV/bin/python" -c 'import tomllib; print(" ".join(map(repr, tomllib.load(open("pyproject.toml", "rb"))["build-system"]["requires"])))')
step "install the appliance" "$SETUP" 180 \
  sh -c "'$VENV/bin/python' -m pip install -q $build_requires && '$VENV/bin/python' -m pip install -q -e '.[inference-tests]' && '$VENV/bin/python' -m pip install -q --no-deps $models" || exit 1

export APPLIANCE_DATA_DIR=$WORK/data
APP=$VENV/bin/appliance
step "data dir and models" "$SETUP" 120 sh -c "'$APP' init && '$APP' models install-defaults"
step "appliance doctor" "$OUT/doctor.txt" 120 "$APP" doctor
cp docs/benchmarks.md "$WORK/benchmarks.before.md"
# server_built: wait for the background build of llama-server; report it as a step.
server_built() {
  local rc
  if [ -z "$SERVER_BUILD" ]; then
    say "SKIP  llama-server build: out of time"
    FAILED=1
    return 1
  fi
  wait "$SERVER_BUILD"
  rc=$?
  SERVER_BUILD=
  report "llama-server build" "$OUT/build.log" "$SERVER_BEGAN" "$SERVER_LIMIT" "$rc"
}
if server_built; then
  step "vs llama-server" "$OUT/benchmarks.txt" 180 \
    "$VENV/bin/python" scripts/bench/vs_llama_server.py --data-dir "$APPLIANCE_DATA_DIR" \
    --runs 3 --max-tokens 64 --streams 8 16 --sdist "$SDIST" --record
else
  say "SKIP  vs llama-server: no llama-server"
fi
step "inference benchmark" "$OUT/benchmarks.txt" 180 \
  "$VENV/bin/python" scripts/bench/inference.py --data-dir "$APPLIANCE_DATA_DIR" --runs 3 --record --force-record
step "batching benchmark" "$OUT/benchmarks.txt" 120 \
  "$VENV/bin/python" scripts/bench/batching.py --data-dir "$APPLIANCE_DATA_DIR" --record --idle-wait 0
diff "$WORK/benchmarks.before.md" docs/benchmarks.md | sed -n 's/^> //p' >"$OUT/benchmarks-new.md"
step "inference tests" "$OUT/tests.txt" 600 \
  "$VENV/bin/python" -m pytest tests/inference -q -p no:cacheprovider --timeout 120
say "total $((SECONDS - START)) s of ${BUDGET} s"
exit "$FAILED"
