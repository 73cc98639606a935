#!/usr/bin/env bash
# A synchronous invocation through the Tencent Cloud API 3.0 endpoint (`Invoke`, signed
# with TC3-HMAC-SHA256 as the SDKs sign it) side by side with the same invocation on the
# native path, through one gateway to one function.
#
#   loadtests/api.sh                 3 rounds x 5 s per path
#   loadtests/api.sh --smoke         1 round x 2 s
#   loadtests/api.sh --rounds 6 --duration 6 --publish
#
# Results: latest-api.{md,json} (smoke-api.*) in loadtests/results/local/, or in
# loadtests/results/ with --publish. Loopback only; every process started is stopped.
set -euo pipefail
. "$(dirname "$0")/common.sh"
build_release
NEED_PROXIES=0 ensure_tools
run_harness api "$@"
