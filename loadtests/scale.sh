#!/usr/bin/env bash
# Scale runs of the gateway alone (loopback, bounded):
#   1,000 functions x 4 instances (half event functions by invocation path, half web
#     functions by [[routes]]) versus 2 functions (one of each), same wrk load: both
#     gateways run side by side, the load alternates between them (A B, B A) in rounds
#     of --duration seconds, and the figure is the median of the per-round ratios;
#   10,000 idle keep-alive client connections: RSS growth and idle CPU;
#   a 64 MB POST streamed through (Content-Length and chunked): RSS growth.
#
#   loadtests/scale.sh [--only functions,idle,body] [--functions 1000] [--duration 10]
#                      [--idle-connections 10000] [--body-mb 64]
#                      [--upstream-idle-timeout 60s] [--scale-rounds 2]
#                      [--gateway-cpus 1 --load-cpus 0]  (functions run: pinned, gateway-bound)
#                      [--publish]
# Results: scale.{md,json} (scale-functions.* and the like for --only) in
# loadtests/results/local/ (ignored by git), or in loadtests/results/ with --publish.
set -euo pipefail
. "$(dirname "$0")/common.sh"
build_release
NEED_PROXIES=0 ensure_tools
run_harness scale "$@"
