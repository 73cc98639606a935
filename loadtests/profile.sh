#!/usr/bin/env bash
# Where the proxies' time goes: syscalls and context switches per request for direct,
# gateway, nginx and HAProxy (perf tracepoints), then a cpu-clock profile of the gateway
# (results/perf-self.txt, results/perf-children.txt, results/profile.json).
#   loadtests/profile.sh [--duration 6] [--no-record]
set -euo pipefail
. "$(dirname "$0")/common.sh"
build_release
ensure_tools
command -v perf >/dev/null || apt_install linux-perf
run_harness profile "$@"
