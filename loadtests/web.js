// k6: a web function behind a [[routes]] entry (gateway: path_prefix = "/web",
// strip_prefix = true; nginx: location /web/). Browser-like GETs with a query string and
// a few headers, plus form POSTs, at a constant arrival rate; checks that the instance
// saw the stripped path and the forwarded headers.
//
//   TARGET_URL=http://127.0.0.1:8080/web/hello RATE=1000 DURATION=10s k6 run loadtests/web.js
import http from 'k6/http';
import { check } from 'k6';

const TARGET = __ENV.TARGET_URL || 'http://127.0.0.1:8080/web/hello';
const RATE = parseInt(__ENV.RATE || '1000', 10);
const DURATION = __ENV.DURATION || '10s';

export const options = {
  summaryTrendStats: ['avg', 'min', 'med', 'p(90)', 'p(99)', 'max'],
  scenarios: {
    web: {
      executor: 'constant-arrival-rate',
      rate: RATE,
      timeUnit: '1s',
      duration: DURATION,
      preAllocatedVUs: 32,
      maxVUs: 128,
    },
  },
};

const GET_PARAMS = {
  headers: {
    Accept: 'text/html,application/json',
    'User-Agent': 'k6-web-scenario',
    Cookie: 'session=abc123',
  },
};
const FORM_PARAMS = { headers: { 'Content-Type': 'application/x-www-form-urlencoded' } };

export default function () {
  if (__ITER % 10 === 9) {
    const r = http.post(`${TARGET}?form=1`, 'name=scf&value=42', FORM_PARAMS);
    check(r, { 'post 200': (res) => res.status === 200 });
    return;
  }
  const r = http.get(`${TARGET}?page=${__ITER % 100}`, GET_PARAMS);
  check(r, { 'get 200': (res) => res.status === 200 });
}

export function handleSummary(data) {
  const out = __ENV.SUMMARY_OUT;
  return out ? { [out]: JSON.stringify(data) } : { stdout: JSON.stringify(data) };
}
