#!/usr/bin/env bash
# The demo: the example function (examples/functions/hello/app.py) on 127.0.0.1:9001 and
# the gateway in front of it on config/gateway.toml (invocations on 127.0.0.1:8080,
# admin on 127.0.0.1:9090).
#
#   bash examples/demo.sh
#   curl -d '{"name":"world"}' localhost:8080/v1/functions/hello/invocations
#   curl localhost:8080/web/hi
#
# Ctrl-C (or SIGTERM to this script) stops the gateway, which drains in-flight
# invocations and exits; the function is stopped whenever the script ends.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

FUNCTION_PORT=9001 # must match `instances` in config/gateway.toml
CONFIG=config/gateway.toml

if ! command -v cargo >/dev/null 2>&1 && [[ -f "$HOME/.cargo/env" ]]; then
  # shellcheck source=/dev/null
  . "$HOME/.cargo/env"
fi

function_pid=""
gateway_pid=""

port_open() {
  (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

stop_function() {
  trap - EXIT INT TERM
  if [[ -n $gateway_pid ]] && kill -0 "$gateway_pid" 2>/dev/null; then
    kill -TERM "$gateway_pid" 2>/dev/null || true
    wait "$gateway_pid" 2>/dev/null || true
  fi
  if [[ -n $function_pid ]] && kill -0 "$function_pid" 2>/dev/null; then
    kill -TERM "$function_pid" 2>/dev/null || true
    wait "$function_pid" 2>/dev/null || true
  fi
}
trap stop_function EXIT

# A signal to the script asks the gateway to drain and exit (it handles SIGTERM);
# the script then ends and the EXIT trap stops the function.
forward_signal() {
  if [[ -n $gateway_pid ]]; then
    kill -TERM "$gateway_pid" 2>/dev/null || true
  else
    exit 130
  fi
}
trap forward_signal INT TERM

# Build first, so the function does not sit idle through a first (slow, LTO) build.
cargo build --release

if port_open "$FUNCTION_PORT"; then
  echo "demo: port $FUNCTION_PORT is already in use; stop whatever listens there" >&2
  exit 1
fi
PORT=$FUNCTION_PORT python3 examples/functions/hello/app.py &
function_pid=$!

for _ in $(seq 100); do
  if ! kill -0 "$function_pid" 2>/dev/null; then
    echo "demo: the example function exited during start-up" >&2
    exit 1
  fi
  if port_open "$FUNCTION_PORT"; then
    break
  fi
  sleep 0.1
done
if ! port_open "$FUNCTION_PORT"; then
  echo "demo: the example function did not listen on port $FUNCTION_PORT within 10s" >&2
  exit 1
fi

cat <<MSG
demo: function on 127.0.0.1:$FUNCTION_PORT; starting the gateway on $CONFIG. Try:
  curl -d '{"name":"world"}' localhost:8080/v1/functions/hello/invocations
  curl localhost:8080/web/hi
  curl localhost:9090/metrics
Ctrl-C stops both.
MSG

cargo run --release -- run --config "$CONFIG" &
gateway_pid=$!

# `wait` returns early when a trapped signal arrives; keep waiting until the gateway
# has really exited, and leave with its exit status.
status=0
while kill -0 "$gateway_pid" 2>/dev/null; do
  if wait "$gateway_pid"; then status=0; else status=$?; fi
done
gateway_pid=""
exit "$status"
