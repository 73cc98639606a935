#!/usr/bin/env bash
# User-space instructions per request (valgrind callgrind) of the gateway and of nginx
# in front of the same instance, under the same wrk load. Instruction counts do not
# move with the machine's other load, so this is the figure to compare changes by on a
# shared machine (req/s is not).
#   loadtests/instructions.sh [--duration 10] [--connections 16] [--only gateway,nginx]
#                             [--gateway path/to/another/scf-gateway]
set -euo pipefail
. "$(dirname "$0")/common.sh"
build_release
ensure_tools
command -v valgrind >/dev/null || apt_install valgrind
run_harness instructions "$@"
