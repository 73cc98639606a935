#!/usr/bin/env bash
# Side-by-side: the Rust example function direct, through scf-gateway, through nginx and
# through HAProxy, under the same wrk load, in alternating rounds (A B C D A B C D ...).
# Then k6 at a constant arrival rate (gateway vs nginx) and the web-function scenario.
#
#   loadtests/compare.sh            5 rounds x 10 s per target + k6 (about 7 minutes)
#   loadtests/compare.sh --smoke    1 round x 2 s + a 3 s k6 run (CI)
#   loadtests/compare.sh --rounds 3 --duration 5 --no-k6 --wrk-cpus 1 --server-cpus 0
#   loadtests/compare.sh --baseline path/to/another/scf-gateway --no-k6 --out DIR
#                                   (that build as a fifth target: gateway/baseline ratios)
#   loadtests/compare.sh --publish  a full run that updates the published results
#   loadtests/compare.sh --tls [--smoke]
#                                   every proxy terminates TLS with one certificate made
#                                   here (openssl); wrk over https, no k6; results in
#                                   latest-tls.* (smoke-tls.*)
#
# Results: latest.{md,json} and latest-ratios.svg (smoke.* for --smoke) in
# loadtests/results/local/ (ignored by git), or in loadtests/results/ with --publish.
# Loopback only; every process started is stopped at exit (see common.sh).
set -euo pipefail
. "$(dirname "$0")/common.sh"
for a in "$@"; do
    # --gateway-rt: the library on another runtime (examples/gateway_rt.rs) as a fifth target.
    case "$a" in --gateway-rt*) EXTRA_EXAMPLES="gateway_rt" ;; esac
done
build_release
need_k6=k6
for a in "$@"; do case "$a" in --no-k6 | --tls) need_k6="" ;; esac; done
ensure_tools $need_k6
run_harness compare "$@"
