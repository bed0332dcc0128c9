#!/usr/bin/env python3
"""The load balancer data plane against nginx, same backend, same machine, same run.

A backend nginx serves a small response inside a network namespace this script makes (a veth
pair on 10.254.N.0/30, so the backend is a private address, as a task's is). Three paths are
loaded with wrk, in alternating order, several rounds:
  direct   wrk -> backend
  nginx    wrk -> nginx reverse proxy (proxy_pass, upstream keepalive) -> backend
  gantry   wrk -> a Gantry application load balancer (gantry dev, release build) -> backend
  bare     (with --bare) wrk -> hyper and hyper-util's pooled client alone, shaped as Gantry's
           data plane (crates/gantry-lb/examples/bare-proxy.rs, built here in release): what
           the foundation costs, so what Gantry adds beyond it is its own
  bare+F   (with --bare-features "F;G;...") the bare proxy again with some of what the data
           plane adds to each connection and request switched on, or another way of doing
           its work (F: comma-separated, from auto, hrt, ka, tmo, fifo, lifo, flat: see
           bare-proxy.rs), one path per variant: what each costs
  pingora  (with --pingora) wrk -> a minimal Cloudflare pingora proxy (bench/pingora-proxy,
           built here in release) -> backend: the foundation the issue asked to weigh against
           hyper, doing only what nginx does here (no rules, no health checks)
  other    (with --against BINARY) wrk -> the same load balancer on another build of Gantry
           (its own `gantry dev`): an A/B of two builds in one run, as this VM drifts
With --tls, the same proxies also serve HTTPS (an EC P-256 certificate made by openssl,
imported through ACM for Gantry), loaded twice: over kept-alive connections (the cost of
encrypting) and with `Connection: close` (a full TLS handshake per request):
  nginx-tls, gantry-tls          https, kept alive
  nginx-tls-new, gantry-tls-new  https, a new connection (and handshake) per request
Reported: requests/s, latency p50/p90/p99 and each proxy's CPU time per request (medians over
rounds; the CPU of nginx's master and workers, of Gantry's gantry-lb threads, of the bare
proxy, read from /proc around each run), and Gantry's ratios to nginx (and the others). At 32 connections the two cores are saturated, and latency there is
mostly queueing (the inverse of throughput); with --unloaded the plain HTTP paths are also
loaded by one connection, one request at a time, where a proxy's latency is what it adds to a
request: reported as each path's percentiles less the direct path's. wrk's own client runs on
the same two cores: compare the ratios, not the numbers. With --pin, one request at a time
runs with every proxy on the last CPU and wrk on the first: where the scheduler happens to
place a proxy against wrk and the backend moves its one-at-a-time latency by more than the
proxies differ, so pinned runs are the steadier comparison.

Usage (root, after `cargo build --release --workspace`; installs nginx-light and wrk from
Debian if missing, without starting Debian's own nginx):
    .venv/bin/python scripts/bench-lb.py [--rounds 5] [--seconds 5] [--connections 32] [--pingora] [--tls]
        [--unloaded [--pin]] [--bare] [--bare-features "hrt;auto,hrt,ka,tmo"] [--against OTHER/target/release/gantry]
"""
import argparse
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(__file__))
from benchlib import child_pids, conftest, cpu_seconds  # noqa: E402

NS = f"gbench{os.getpid() % 10000}"
NET = f"10.254.{os.getpid() % 250}"
HOST_IF, NS_IF = f"gbh{os.getpid() % 10000}", f"gbn{os.getpid() % 10000}"
BACKEND = f"{NET}.2"


def sh(*args, **kw):
    return subprocess.run(args, check=True, capture_output=True, text=True, **kw)


def install(pingora=False):
    wanted = [("nginx-light", "nginx"), ("wrk", "wrk")] + ([("cmake", "cmake")] if pingora else [])
    missing = [p for p, b in wanted if not shutil.which(b)]
    if not missing:
        return
    # Debian would start its own nginx on port 80: forbid service starts while installing.
    with open("/usr/sbin/policy-rc.d", "w") as f:
        f.write("#!/bin/sh\nexit 101\n")
    os.chmod("/usr/sbin/policy-rc.d", 0o755)
    try:
        subprocess.run(["apt-get", "install", "-y", "-qq", *missing], check=True,
                       env=dict(os.environ, DEBIAN_FRONTEND="noninteractive"))
    finally:
        os.remove("/usr/sbin/policy-rc.d")


def nginx_conf(d, name, server):
    conf = os.path.join(d, f"{name}.conf")
    with open(conf, "w") as f:
        f.write(f"""worker_processes auto;
pid {d}/{name}.pid;
error_log {d}/{name}.err;
events {{ worker_connections 1024; }}
http {{
  access_log off;
  client_body_temp_path {d}/{name}-body; proxy_temp_path {d}/{name}-proxy;
  fastcgi_temp_path {d}/{name}-fcgi; uwsgi_temp_path {d}/{name}-uwsgi; scgi_temp_path {d}/{name}-scgi;
  {server}
}}
""")
    return conf


def start_backend(d):
    sh("ip", "netns", "add", NS)
    sh("ip", "link", "add", HOST_IF, "type", "veth", "peer", "name", NS_IF)
    sh("ip", "link", "set", NS_IF, "netns", NS)
    sh("ip", "addr", "add", f"{NET}.1/30", "dev", HOST_IF)
    sh("ip", "link", "set", HOST_IF, "up")
    sh("ip", "netns", "exec", NS, "ip", "addr", "add", f"{BACKEND}/30", "dev", NS_IF)
    sh("ip", "netns", "exec", NS, "ip", "link", "set", NS_IF, "up")
    sh("ip", "netns", "exec", NS, "ip", "link", "set", "lo", "up")
    conf = nginx_conf(d, "backend", f"server {{ listen {BACKEND}:8080; keepalive_requests 100000; "
                                    "location / { return 200 'hello from the backend\\n'; } }")
    return subprocess.Popen(["ip", "netns", "exec", NS, "nginx", "-c", conf, "-g", "daemon off;"])


def make_certificate(d):
    """A self-signed EC P-256 certificate for bench.example: (certificate, key) paths."""
    cert, key = os.path.join(d, "bench.pem"), os.path.join(d, "bench.key")
    sh("openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
       "-keyout", key, "-out", cert, "-subj", "/CN=bench.example", "-addext", "subjectAltName=DNS:bench.example",
       "-days", "1")
    return cert, key


def start_nginx_proxy(d, port, tls=None):
    """nginx proxying to the backend on 127.0.0.1:port; with tls (port, certificate, key) also
    over HTTPS there."""
    https = ""
    if tls:
        tport, cert, key = tls
        # TLS 1.3 as Gantry (and nginx from 1.23.4 on) offers it; Debian 12's nginx 1.22 would not.
        https = (f"listen 127.0.0.1:{tport} ssl; ssl_certificate {cert}; ssl_certificate_key {key}; "
                 "ssl_protocols TLSv1.2 TLSv1.3; ")
    conf = nginx_conf(d, "proxy", f"upstream b {{ server {BACKEND}:8080; keepalive 64; }} "
                                  f"server {{ listen 127.0.0.1:{port}; {https}keepalive_requests 100000; location / {{ "
                                  "proxy_pass http://b; proxy_http_version 1.1; proxy_set_header Connection ''; "
                                  "proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for; } }")
    return subprocess.Popen(["nginx", "-c", conf, "-g", "daemon off;"])


def gantry_https_listener(g, lb_arn, tg, cert, key):
    """An HTTPS listener on 443 with the certificate imported through ACM."""
    arn = g.client("acm").import_certificate(Certificate=open(cert, "rb").read(),
                                             PrivateKey=open(key, "rb").read())["CertificateArn"]
    g.client("elbv2").create_listener(LoadBalancerArn=lb_arn, Protocol="HTTPS", Port=443,
                                      Certificates=[{"CertificateArn": arn}],
                                      DefaultActions=[{"Type": "forward", "TargetGroupArn": tg}])


def gantry_lb(g, tls=None):
    """A load balancer forwarding to the backend: its DNS name. With tls (certificate, key),
    also an HTTPS listener."""
    elb = g.client("elbv2")
    tg = elb.create_target_group(Name="bench", Protocol="HTTP", Port=8080, TargetType="ip",
                                 HealthCheckIntervalSeconds=5, HealthCheckTimeoutSeconds=2)["TargetGroups"][0]["TargetGroupArn"]
    elb.register_targets(TargetGroupArn=tg, Targets=[{"Id": BACKEND}])
    subnets = [s["SubnetId"] for s in g.client("ec2").describe_subnets()["Subnets"]]
    lb = elb.create_load_balancer(Name="bench", Subnets=subnets)["LoadBalancers"][0]
    elb.create_listener(LoadBalancerArn=lb["LoadBalancerArn"], Protocol="HTTP", Port=80,
                        DefaultActions=[{"Type": "forward", "TargetGroupArn": tg}])
    if tls:
        gantry_https_listener(g, lb["LoadBalancerArn"], tg, *tls)
    deadline = time.time() + 30
    while time.time() < deadline:
        h = elb.describe_target_health(TargetGroupArn=tg)["TargetHealthDescriptions"]
        if h and h[0]["TargetHealth"]["State"] == "healthy":
            return lb["DNSName"]
        time.sleep(0.2)
    raise SystemExit("the backend never became healthy behind the Gantry load balancer")


def start_pingora(port):
    """Builds (release) and starts the pingora proxy on 127.0.0.1:port, one thread per core."""
    root = os.path.join(os.path.dirname(__file__), "..", "bench", "pingora-proxy")
    subprocess.run(["cargo", "build", "--release", "--quiet", "--manifest-path", os.path.join(root, "Cargo.toml")],
                   check=True)
    binary = os.path.join(root, "target", "release", "pingora-proxy-bench")
    return subprocess.Popen([binary, f"127.0.0.1:{port}", f"{BACKEND}:8080", str(os.cpu_count())],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def start_bare(port, features=""):
    """Builds (release) and starts the bare hyper proxy on 127.0.0.1:port, with `features`."""
    root = os.path.join(os.path.dirname(__file__), "..")
    subprocess.run(["cargo", "build", "--release", "--quiet", "-p", "gantry-lb", "--example", "bare-proxy"],
                   check=True, cwd=root)
    binary = os.path.join(root, "target", "release", "examples", "bare-proxy")
    # Its stderr shows: an unknown feature is said there, not only as a proxy that never answers.
    return subprocess.Popen([binary, f"127.0.0.1:{port}", f"{BACKEND}:8080", features],
                            stdout=subprocess.DEVNULL)


def wait_http(url):
    url = url.split()[-1]
    deadline = time.time() + 10
    while time.time() < deadline:
        if subprocess.run(["wrk", "-t1", "-c1", "-d1s", url], capture_output=True).returncode == 0:
            return
        time.sleep(0.2)
    raise SystemExit(f"{url} does not answer")


UNITS = {"us": 0.001, "ms": 1.0, "s": 1000.0}
# The ratios reported, each of paths measured in the same run.
PAIRS = [("gantry", "nginx"), ("other", "nginx"), ("gantry", "other"), ("bare", "nginx"), ("gantry", "bare"), ("pingora", "nginx"), ("gantry", "pingora"),
         ("gantry-tls", "nginx-tls"), ("gantry-tls-new", "nginx-tls-new")]


def pairs(paths):
    """PAIRS among `paths`, and each bare proxy variant against the bare proxy."""
    variants = [(k, "bare") for k in paths if k.startswith("bare+")]
    return [(x, y) for x, y in PAIRS + variants if x in paths and y in paths]


def wrk(url, seconds, connections, cpu=None, on_cpu=None):
    """wrk on `url` (prefixed "new " for a new connection per request): requests/s, latency
    percentiles, and with `cpu` (a function giving the proxy's CPU seconds so far) the proxy's
    CPU microseconds per request. With `on_cpu`, wrk runs on that CPU only."""
    new = url.startswith("new ")
    args = ["-H", "Connection: close", url.split()[-1]] if new else [url]
    pin = ["taskset", "-c", str(on_cpu)] if on_cpu is not None else []
    before = cpu() if cpu else 0.0
    out = sh(*pin, "wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "--latency", *args).stdout
    used = cpu() - before if cpu else None
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    count = int(re.search(r"(\d+) requests in", out).group(1))
    lat = {p: float(v) * UNITS[u] for p, v, u in re.findall(r"^\s+(50|90|99)%\s+([\d.]+)(us|ms|s)\s*$", out, re.M)}
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)|Socket errors: (.*)", out)
    if errors:
        raise SystemExit(f"{url}: errors under load: {errors.group(0)}")
    return rps, lat, (used * 1e6 / count if used is not None and count else None)


def cpu_column(rs):
    """The median CPU per request over rounds, as a column (blank for the direct path)."""
    costs = [r[2] for r in rs if r[2] is not None]
    return f"   CPU {statistics.median(costs):6.1f} us/req" if costs else ""


def set_cpus(pids, cpus):
    """Every thread of each of `pids` allowed on `cpus` only."""
    for pid in pids:
        for tid in os.listdir(f"/proc/{pid}/task"):
            try:
                os.sched_setaffinity(int(tid), cpus)
            except ProcessLookupError:
                pass  # a thread that ended meanwhile


def unloaded(paths, cpu, a, proxies):
    """Each path at one connection (alternating order, a.rounds rounds): the latency a proxy
    adds to one request, as its percentiles less the direct path's. With a.pin, every proxy
    (`proxies`: their processes) runs on the last CPU and wrk on the first, so that where the
    scheduler puts them does not differ between paths and rounds."""
    results = {k: [] for k in paths}
    last = os.cpu_count() - 1
    if a.pin:
        set_cpus(proxies, {last})
    try:
        for r in range(a.rounds):
            for name in (list(paths) if r % 2 == 0 else reversed(list(paths))):
                results[name].append(wrk(paths[name], a.seconds, 1, cpu.get(name), 0 if a.pin else None))
    finally:
        if a.pin:
            set_cpus(proxies, set(range(last + 1)))
    med = {n: {p: statistics.median(r[1][p] for r in rs) for p in ("50", "90", "99")} for n, rs in results.items()}
    pinned = f", proxies on CPU {last} and wrk on CPU 0" if a.pin else ""
    print(f"wrk -t1 -c1 -d{a.seconds}s (one request at a time{pinned}), {a.rounds} rounds, medians over rounds")
    for name, lat in med.items():
        added = "" if name == "direct" else "   added p50 {:.3f} ms  p90 {:.3f} ms".format(
            lat["50"] - med["direct"]["50"], lat["90"] - med["direct"]["90"])
        print(f"{name:<20} p50 {lat['50']:7.3f} ms   p90 {lat['90']:7.3f} ms   p99 {lat['99']:7.3f} ms{added}"
              f"{cpu_column(results[name])}")
    for ours, other in pairs(med):
        x, y = (med[n]["50"] - med["direct"]["50"] for n in (ours, other))
        print(f"{ours}/{other} added p50 (one at a time): {x / y:.2f}x")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--seconds", type=int, default=5)
    ap.add_argument("--connections", type=int, default=32)
    ap.add_argument("--perf", help="also record a perf profile of gantry during one round into this file")
    ap.add_argument("--pingora", action="store_true", help="also measure a minimal pingora proxy")
    ap.add_argument("--bare", action="store_true", help="also measure hyper alone, shaped as Gantry's data plane")
    ap.add_argument("--bare-features", help="also measure the bare proxy with these features switched on: "
                    "variants separated by ';', each a comma-separated list of auto, hrt, ka, tmo, fifo, lifo, flat")
    ap.add_argument("--tls", action="store_true", help="also measure HTTPS, kept alive and a handshake per request")
    ap.add_argument("--against", help="also measure another build's gantry binary (path 'other'), in the same rounds")
    ap.add_argument("--unloaded", action="store_true",
                    help="also measure the latency each proxy adds at one connection, one request at a time")
    ap.add_argument("--pin", action="store_true",
                    help="with --unloaded: the proxies on the last CPU, wrk on the first, the same for every path")
    a = ap.parse_args()
    if a.pin and not a.unloaded:
        ap.error("--pin pins the one-at-a-time runs: it needs --unloaded")
    assert os.geteuid() == 0, "run as root"
    install(a.pingora)  # pingora's zlib-ng builds with cmake
    d = tempfile.mkdtemp(prefix="gantry-bench-lb-")
    procs, g, other = [], None, None
    try:
        procs.append(start_backend(d))
        port, tport = conftest.free_port(), conftest.free_port()
        cert = make_certificate(d) if a.tls else None
        procs.append(start_nginx_proxy(d, port, (tport, *cert) if cert else None))
        nginx = procs[-1].pid
        g = conftest.Gantry(instance=40)
        g.start()
        name = gantry_lb(g, cert)
        if a.against:
            this_binary, conftest.GANTRY = conftest.GANTRY, os.path.abspath(a.against)
            other = conftest.Gantry(instance=42)  # reads conftest.GANTRY as it starts
            other.start()
            conftest.GANTRY = this_binary
            other_name = gantry_lb(other)
        paths = {"direct": f"http://{BACKEND}:8080/", "nginx": f"http://127.0.0.1:{port}/",
                 "gantry": f"http://{name}/"}
        if a.tls:
            paths.update({"nginx-tls": f"https://127.0.0.1:{tport}/", "gantry-tls": f"https://{name}/",
                          "nginx-tls-new": f"new https://127.0.0.1:{tport}/", "gantry-tls-new": f"new https://{name}/"})
        if other:
            paths["other"] = f"http://{other_name}/"
        if a.pingora:
            pport = conftest.free_port()
            procs.append(start_pingora(pport))
            pingora = procs[-1].pid
            paths["pingora"] = f"http://127.0.0.1:{pport}/"
        bare_cpu = {}
        variants = a.bare_features.split(";") if a.bare_features else []
        # The plain bare proxy first: the variants are weighed against it.
        for variant in ([""] if a.bare or variants else []) + [v for v in variants if v]:
            bport = conftest.free_port()
            procs.append(start_bare(bport, variant))
            path = "bare+" + variant if variant else "bare"
            paths[path] = f"http://127.0.0.1:{bport}/"
            bare_cpu[path] = procs[-1].pid
        for url in paths.values():
            wait_http(url)
        # Each proxy's CPU so far: nginx's master and workers, Gantry's load balancer threads.
        cpu = {}
        for path in paths:
            if path.startswith("nginx"):
                cpu[path] = lambda: sum(cpu_seconds(p) for p in [nginx, *child_pids(nginx)])
            elif path.startswith("gantry"):
                cpu[path] = lambda: cpu_seconds(g.proc.pid, "gantry-lb")
        if other:
            cpu["other"] = lambda: cpu_seconds(other.proc.pid, "gantry-lb")
        for path, pid in bare_cpu.items():
            cpu[path] = lambda pid=pid: cpu_seconds(pid)
        if a.pingora:
            cpu["pingora"] = lambda: cpu_seconds(pingora)
        if a.perf:
            rec = subprocess.Popen(["perf", "record", "-g", "-o", a.perf, "-p", str(g.proc.pid), "--", "sleep",
                                    str(a.seconds)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            wrk(paths["gantry"], a.seconds, a.connections)
            rec.wait()
        results = {k: [] for k in paths}
        order = list(paths)
        for r in range(a.rounds):
            for name in (order if r % 2 == 0 else reversed(order)):
                results[name].append(wrk(paths[name], a.seconds, a.connections, cpu.get(name)))
        print(f"wrk -t1 -c{a.connections} -d{a.seconds}s, {a.rounds} rounds, medians over rounds")
        med = {}
        for name, rs in results.items():
            rps = statistics.median(r[0] for r in rs)
            lat = {p: statistics.median(r[1][p] for r in rs) for p in ("50", "90", "99")}
            med[name] = (rps, lat)
            print(f"{name:<20} {rps:>9.0f} req/s   p50 {lat['50']:7.2f} ms   p90 {lat['90']:7.2f} ms   p99 {lat['99']:7.2f} ms"
                  f"{cpu_column(rs)}")
        for a_name, b_name in pairs(med):
            (x_rps, x_lat), (y_rps, y_lat) = med[a_name], med[b_name]
            print(f"{a_name}/{b_name}: throughput {x_rps / y_rps:.2f}x, p50 {x_lat['50'] / y_lat['50']:.2f}x, "
                  f"p90 {x_lat['90'] / y_lat['90']:.2f}x, p99 {x_lat['99'] / y_lat['99']:.2f}x")
        if a.unloaded:
            plain = ("direct", "nginx", "gantry", "other", "bare", "pingora")
            proxies = [nginx, *child_pids(nginx), g.proc.pid, *bare_cpu.values()]
            proxies += [other.proc.pid] if other else []
            proxies += [pingora] if a.pingora else []
            unloaded({k: v for k, v in paths.items() if k in plain or k.startswith("bare+")}, cpu, a, proxies)
    finally:
        for gantry in (g, other):
            if gantry:
                gantry.cleanup()
        for p in procs:
            p.send_signal(signal.SIGQUIT)
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()
        subprocess.run(["ip", "link", "del", HOST_IF], capture_output=True)
        subprocess.run(["ip", "netns", "del", NS], capture_output=True)
        shutil.rmtree(d, ignore_errors=True)


if __name__ == "__main__":
    main()
