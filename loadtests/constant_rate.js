// k6: constant-arrival-rate POSTs of a small JSON event, below saturation, so latency is
// compared at the same offered rate (compare.sh runs it against the gateway and nginx).
//
//   TARGET_URL=http://127.0.0.1:8080/v1/functions/hello/invocations RATE=3000 \
//   DURATION=10s k6 run loadtests/constant_rate.js
//
// SUMMARY_OUT: where handleSummary writes the JSON summary (default: stdout).
import http from 'k6/http';
import { check } from 'k6';

const TARGET = __ENV.TARGET_URL || 'http://127.0.0.1:8080/v1/functions/hello/invocations';
const RATE = parseInt(__ENV.RATE || '2000', 10);
const DURATION = __ENV.DURATION || '10s';

export const options = {
  discardResponseBodies: true,
  summaryTrendStats: ['avg', 'min', 'med', 'p(90)', 'p(99)', 'max'],
  scenarios: {
    constant: {
      executor: 'constant-arrival-rate',
      rate: RATE,
      timeUnit: '1s',
      duration: DURATION,
      preAllocatedVUs: 64,
      maxVUs: 256,
    },
  },
};

const BODY = JSON.stringify({ key1: 'value1', key2: 'value2', n: 42, source: 'k6' });
const PARAMS = { headers: { 'Content-Type': 'application/json' } };

export default function () {
  const r = http.post(TARGET, BODY, PARAMS);
  check(r, { 'status 200': (res) => res.status === 200 });
}

export function handleSummary(data) {
  const out = __ENV.SUMMARY_OUT;
  return out ? { [out]: JSON.stringify(data) } : { stdout: JSON.stringify(data) };
}
