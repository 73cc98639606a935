#!/usr/bin/env bash
# Runtime models for workers > 1, against the same example-function instance(s) and the
# same wrk load (wrk -t2 -c64, post.lua), in alternating rounds:
#   current1   one gateway, workers = 1 (current_thread runtime)
#   workers2   one gateway, workers = 2 (as built: thread-per-core, two current_thread
#              workers accepting on one listening socket)
#   tpc2       thread-per-core emulated by processes: two gateway processes
#              with workers = 1 each (own runtime, listener and upstream pool), wrk's
#              thread 1 sent to one and thread 2 to the other, as SO_REUSEPORT splits
#              connections between per-thread listeners.
# Per model: req/s, p50, p99, gateway CPU per 100k requests (user, sys), context switches
# per request (all threads), ratios; medians over rounds.
#
#   loadtests/runtime.sh                 5 rounds x 10 s per model (about 3 minutes)
#   loadtests/runtime.sh --smoke         1 round x 2 s
#   loadtests/runtime.sh --instances 2 --tag runtime-2instances
#
# Results: runtime.{md,json} (smoke-runtime.* for --smoke) in loadtests/results/local/
# (ignored by git), or in loadtests/results/ with --publish.
# Loopback only; every process started is stopped at exit (see common.sh).
set -euo pipefail
. "$(dirname "$0")/common.sh"
build_release
NEED_PROXIES=0 ensure_tools
run_harness runtime "$@"
