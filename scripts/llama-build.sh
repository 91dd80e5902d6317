#!/usr/bin/env bash
# How llama-cpp-python is built for the appliance, in one place. install.sh (local and
# --system) and scripts/gpu-check.sh call it; docs/operations.md ("Building llama.cpp")
# explains it.
#
# Usage: scripts/llama-build.sh [--cpu | --cuda] [--rebuild] [--sdist FILE] [--dry-run] PYTHON
#        scripts/llama-build.sh --print-args [--cpu | --cuda]
#
#   PYTHON        the venv's interpreter (e.g. .venv/bin/python)
#   --cpu/--cuda  what to build for; default: CUDA when nvcc is found and nvidia-smi
#                 lists a GPU, else CPU
#   --rebuild     build even when the installed one was built on this machine
#   --sdist FILE  build from this source archive or unpacked source folder (default: the
#                 installed version from PyPI, or the newest one pyproject.toml allows)
#   --dry-run     print what would be done
#   --print-args  print the CMAKE_ARGS and exit
#   CMAKE_ARGS    in the environment: used instead of the flags below
#
# What the flags mean:
#   CPU   -DGGML_NATIVE=ON: ggml is compiled with -march=native, for the CPU it is built
#         on: every instruction set extension of that CPU (AVX2, AVX-512, AVX-VNNI, the
#         AMX tiles of a Sapphire Rapids Xeon, ...) may appear anywhere in the library.
#         The fastest build for this machine, and only for it: on a CPU without one of
#         those extensions it dies with SIGILL (an Intel Xeon's build on an AMD EPYC and
#         vice versa). Turning GGML_AMX_* off does not remove AMX: -march=native still
#         defines the AMX macros. The AMX kernels are only used through llama.cpp's
#         "extra buffer types" (weight repacking), which the appliance loads models
#         without unless inference.cpu_repack says otherwise.
#   CUDA  -DGGML_CUDA=ON on top: the CUDA backend, its kernels compiled by nvcc for this
#         machine's GPU (CMAKE_CUDA_ARCHITECTURES defaults to "native" with GGML_NATIVE),
#         the CPU part as above.
#
# pip caches the wheels it builds by source archive, not by CPU or CMAKE_ARGS, so a disk
# (or a home directory) moved to another machine would reinstall the old machine's
# build. This script therefore builds with a pip cache of its own per fingerprint (the
# CPU's flags, the mode, the CMAKE_ARGS, the GPUs' compute capabilities) and writes that
# fingerprint next to the venv (VENV/llama-cpp-build); when the venv's differs from this
# machine's, llama-cpp-python is rebuilt.
set -euo pipefail

CPU_CMAKE_ARGS="-DGGML_NATIVE=ON"
CUDA_CMAKE_ARGS="-DGGML_NATIVE=ON -DGGML_CUDA=ON"
DEFAULT_SPEC="llama-cpp-python>=0.3.8" # pyproject.toml's lower bound

usage() { sed -n '2,18p' "$0" | sed 's/^# \{0,1\}//'; }

MODE=
REBUILD=0
SDIST=
DRY_RUN=0
PRINT_ARGS=0
PY=
while [ $# -gt 0 ]; do
  case "$1" in
    --cpu) MODE=cpu ;;
    --cuda) MODE=cuda ;;
    --rebuild) REBUILD=1 ;;
    --sdist)
      [ $# -ge 2 ] || { echo "llama-build.sh: --sdist needs a file" >&2; exit 2; }
      SDIST=$2
      shift
      ;;
    --dry-run) DRY_RUN=1 ;;
    --print-args) PRINT_ARGS=1 ;;
    -h | --help) usage; exit 0 ;;
    -*) echo "llama-build.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
    *) PY=$1 ;;
  esac
  shift
done

find_nvcc() {
  if command -v nvcc >/dev/null 2>&1; then
    command -v nvcc
  elif [ -x /usr/local/cuda/bin/nvcc ]; then
    echo /usr/local/cuda/bin/nvcc
  fi
}

if [ -z "$MODE" ]; then
  # A CUDA build needs the toolkit and a GPU the driver can see: a toolkit alone (a CI
  # image, a build box) would produce a build that cannot link or cannot run.
  if [ -n "$(find_nvcc)" ] && command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
    MODE=cuda
  else
    MODE=cpu
  fi
fi
if [ -n "${CMAKE_ARGS:-}" ]; then
  ARGS=$CMAKE_ARGS
elif [ "$MODE" = cuda ]; then
  ARGS=$CUDA_CMAKE_ARGS
else
  ARGS=$CPU_CMAKE_ARGS
fi
if [ "$PRINT_ARGS" = 1 ]; then
  echo "$ARGS"
  exit 0
fi
[ -n "$PY" ] || { usage >&2; exit 2; }

cpu_flags() { grep -m1 -E '^(flags|Features)' /proc/cpuinfo 2>/dev/null || uname -m; }
gpu_caps() {
  if [ "$MODE" = cuda ]; then
    nvidia-smi --query-gpu=compute_cap --format=csv,noheader 2>/dev/null | sort -u | tr '\n' ' '
  fi
}
FINGERPRINT=$(printf '%s\n%s\n%s\n%s\n' "$(cpu_flags)" "$MODE" "$ARGS" "$(gpu_caps)" \
  | sha256sum | cut -c1-16)
VENV=$(dirname "$(dirname "$PY")")
MARKER=$VENV/llama-cpp-build
CACHE=${XDG_CACHE_HOME:-$HOME/.cache}/appliance/llama-cpp-$FINGERPRINT

installed_version() {
  "$PY" -c 'import importlib.metadata as m; print(m.version("llama_cpp_python"))' 2>/dev/null
}
has_gpu_offload() {
  "$PY" -c 'import llama_cpp, sys; sys.exit(not llama_cpp.llama_supports_gpu_offload())' 2>/dev/null
}

VERSION=$(installed_version || true)
RECORDED=$(cat "$MARKER" 2>/dev/null || true)
reason=
if [ "$REBUILD" = 1 ]; then
  reason="asked to rebuild"
elif [ -n "$SDIST" ]; then
  reason="building from $SDIST"
elif [ -z "$VERSION" ]; then
  reason="not installed"
elif [ "$MODE" = cuda ] && ! has_gpu_offload; then
  reason="the installed build has no GPU offload"
elif [ -z "$RECORDED" ]; then
  # Installed before this script kept a record: taken as built here (the model
  # self-test catches a build from another CPU, with this script's --rebuild as the fix).
  echo "llama-cpp-python $VERSION: no build record; taken as built on this machine ($MODE)"
  [ "$DRY_RUN" = 1 ] || echo "$FINGERPRINT" >"$MARKER"
  exit 0
elif [ "$RECORDED" != "$FINGERPRINT" ]; then
  reason="built on another machine (CPU or GPU changed: fingerprint $RECORDED, this one $FINGERPRINT)"
else
  echo "llama-cpp-python $VERSION: built on this machine ($MODE, CMAKE_ARGS=$ARGS)"
  exit 0
fi

if [ -n "$SDIST" ]; then
  SPEC=$SDIST
elif [ -n "$VERSION" ]; then
  SPEC="llama-cpp-python==$VERSION"
else
  SPEC=$DEFAULT_SPEC
fi
pip_args=(install --cache-dir "$CACHE")
if [ -n "$VERSION" ]; then
  # Its dependencies are installed already; only the compiled package is replaced.
  pip_args+=(--force-reinstall --no-deps)
fi
env_args=("CMAKE_ARGS=$ARGS" FORCE_CMAKE=1)
if [ "$MODE" = cuda ] && ! command -v nvcc >/dev/null 2>&1; then
  env_args+=("CUDACXX=$(find_nvcc)")
fi
echo "building llama-cpp-python ($reason): CMAKE_ARGS=\"$ARGS\" (pip cache $CACHE)"
printf '  +'
printf ' %q' env "${env_args[@]}" "$PY" -m pip "${pip_args[@]}" "$SPEC"
echo
[ "$DRY_RUN" = 1 ] && exit 0
env "${env_args[@]}" "$PY" -m pip "${pip_args[@]}" "$SPEC"
if [ "$MODE" = cuda ] && ! has_gpu_offload; then
  echo "llama-build.sh: the CUDA build has no GPU offload: check that nvcc matches the driver" >&2
  exit 1
fi
echo "$FINGERPRINT" >"$MARKER"
echo "llama-cpp-python $(installed_version): built for this machine ($MODE)"
