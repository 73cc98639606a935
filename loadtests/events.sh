#!/usr/bin/env bash
# Asynchronous invocations under load: accepted `Event` invocations per second into the
# embedded store and into Redis, side by side with synchronous invocations of the same
# function, and how fast each backlog then runs.
#
#   loadtests/events.sh                 3 rounds x 5 s per mode
#   loadtests/events.sh --smoke         1 round x 2 s
#   loadtests/events.sh --rounds 5 --duration 10 --publish
#
# Results: latest-events.{md,json} (smoke-events.*) in loadtests/results/local/, or in
# loadtests/results/ with --publish. Loopback only; every process started is stopped.
set -euo pipefail
. "$(dirname "$0")/common.sh"
build_release
NEED_PROXIES=0 ensure_tools
command -v redis-server >/dev/null || [ -x /usr/bin/redis-server ] || apt_install redis-server
run_harness events "$@"
