#!/usr/bin/env bash
# Where the proxies' time goes: syscalls and context switches per request for direct,
# gateway, nginx and HAProxy (perf tracepoints), then a cpu-clock profile of the gateway
# (perf-self.txt, perf-children.txt, profile.json in loadtests/results/local/).
#   loadtests/profile.sh [--duration 6] [--no-record] [--publish]
set -euo pipefail
. "$(dirname "$0")/common.sh"
build_release
ensure_tools
command -v perf >/dev/null || apt_install linux-perf
run_harness profile "$@"
