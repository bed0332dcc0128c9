#!/usr/bin/env python3
"""Cluster mode against `gantry dev`, same script, same machine: client-observed RunTask to
RUNNING one task at a time through a `gantry server` (on a real etcd) and a remote agent over
mutual TLS, through `gantry dev` on the same kind of etcd (the difference is the remote
agent protocol), and through `gantry dev` on SQLite (the difference is etcd's replicated,
fsynced writes); then a burst of tasks over three agents to all RUNNING. `crun run` of an
equivalent bundle is the baseline (scripts/bench.sh).

Usage (root, after `cargo build --release --workspace`):
    .venv/bin/python scripts/bench-cluster.py [--tasks 50] [--burst 300] [--rounds 1]
"""
import argparse
import os
import re
import statistics
import subprocess
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests", "e2e"))
import conftest  # noqa: E402

conftest.GANTRY = os.path.join(conftest.ROOT, "target", "release", "gantry")
import test_cluster  # noqa: E402  (its Server and Agent, with the release binary)
import test_etcd  # noqa: E402

WARM_POOL = "16"
LOOP = "trap 'exit 0' TERM; while :; do sleep 1; done"


def pct(v, p):
    v = sorted(v)
    return v[min(len(v) - 1, round((len(v) - 1) * p))]


def summary(name, ms):
    print(f"{name:<48} n={len(ms):<4} median {statistics.median(ms):8.1f} ms   p90 {pct(ms, 0.9):8.1f} ms")
    return statistics.median(ms), pct(ms, 0.9)


def wait_running(ecs, arns, timeout=120):
    pending = set(arns)
    deadline = time.time() + timeout
    while pending:
        assert time.time() < deadline, f"{len(pending)} tasks never reached RUNNING"
        for chunk in [list(pending)[i:i + 100] for i in range(0, len(pending), 100)]:
            for t in ecs.describe_tasks(cluster="default", tasks=chunk)["tasks"]:
                if t["lastStatus"] == "RUNNING":
                    pending.discard(t["taskArn"])
                elif t["lastStatus"] == "STOPPED":
                    raise AssertionError(f"task stopped: {t.get('stoppedReason')}")
        time.sleep(0.005)


def one_at_a_time(ecs, n):
    lat = []
    for _ in range(n):
        t0 = time.perf_counter()
        arn = conftest.run(ecs, "default", "bench")[0]["taskArn"]
        wait_running(ecs, [arn])
        lat.append((time.perf_counter() - t0) * 1000)
        ecs.stop_task(cluster="default", task=arn)
        time.sleep(0.1)  # let the namespace pool refill between samples
    return lat


def burst(ecs, n):
    t0 = time.perf_counter()
    arns = []
    for _ in range(n // 10):
        arns += [t["taskArn"] for t in conftest.run(ecs, "default", "bench", count=10)]
    wait_running(ecs, arns, timeout=600)
    took = time.perf_counter() - t0
    for arn in arns:
        ecs.stop_task(cluster="default", task=arn)
    for chunk in [arns[i:i + 100] for i in range(0, len(arns), 100)]:
        conftest.wait_stopped(ecs, "default", chunk)
    return took


def cluster_phase(a):
    etcd = test_etcd.Etcd()
    server = test_cluster.Server(f"etcd://{etcd.address}/bench", "bench")
    agents = []
    try:
        etcd.start()
        agents = [test_cluster.Agent(instance=20 + i) for i in range(3)]
        for ag in agents:
            ag.env["GANTRY_WARM_POOL"] = WARM_POOL
        server.start(agents[0].env)
        test_cluster.wait_for("the server", lambda: test_cluster._listening(server.port), 30)
        token = subprocess.run([conftest.GANTRY, "--data-dir", f"{server.dir}/data", "server", "token", "create",
                                "--store", server.store], check=True, capture_output=True, text=True,
                               env=agents[0].env).stdout.strip()
        token_file = os.path.join(server.dir, "token")
        open(token_file, "w").write(token)
        for i, ag in enumerate(agents):
            ag.start_agent([server.agent_url], token_file, f"bench-{i}", f"us-east-1{'abc'[i]}")
        ecs = test_cluster.ecs_of(agents[0], server)
        test_cluster.wait_for("three nodes", lambda: len(
            ecs.list_container_instances(cluster="default")["containerInstanceArns"]) == 3, 60)
        conftest.register(ecs, "bench", [{"name": "app", "command": ["sh", "-c", LOOP], "stopTimeout": 2}])
        time.sleep(3)  # let the warm pools fill
        lat = one_at_a_time(ecs, a.tasks)
        time.sleep(3)
        bursts = [burst(ecs, a.burst) for _ in range(a.rounds)]
        return lat, bursts
    finally:
        for ag in agents:
            ag.cleanup()
        server.stop()
        etcd.remove()


def dev_phase(a, on_etcd):
    g = conftest.Gantry(instance=23)
    g.env["GANTRY_WARM_POOL"] = WARM_POOL
    etcd = test_etcd.Etcd() if on_etcd else None
    try:
        if etcd:
            etcd.start()
            g.env["GANTRY_STORE"] = f"etcd://{etcd.address}/bench-dev"
        g.start()
        ecs = g.client("ecs")
        conftest.register(ecs, "bench", [{"name": "app", "command": ["sh", "-c", LOOP], "stopTimeout": 2}])
        time.sleep(3)
        return one_at_a_time(ecs, a.tasks)
    finally:
        g.cleanup()
        if etcd:
            etcd.remove()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--tasks", type=int, default=50)
    ap.add_argument("--burst", type=int, default=300)
    ap.add_argument("--rounds", type=int, default=1)
    a = ap.parse_args()
    remote, bursts = cluster_phase(a)
    dev_etcd = dev_phase(a, on_etcd=True)
    local = dev_phase(a, on_etcd=False)
    out = subprocess.run(["bash", os.path.join(conftest.ROOT, "scripts", "bench.sh")], env=dict(os.environ, RUNS="30"),
                         capture_output=True, text=True)
    crun = re.search(r"crun run \(baseline\)\s+n=\d+\s+median\s+([\d.]+) ms\s+p90\s+([\d.]+)", out.stdout)
    print(f"RunTask -> RUNNING (client-observed, {a.tasks} tasks, one at a time)")
    rm, rp = summary("server + remote agent (etcd, mutual TLS)", remote)
    em, ep = summary("gantry dev on etcd (one process)", dev_etcd)
    dm, dp = summary("gantry dev (one process, SQLite)", local)
    print(f"remote agent protocol adds: median {rm - em:+.1f} ms, p90 {rp - ep:+.1f} ms (server+agent vs dev, both on etcd)")
    print(f"etcd adds: median {em - dm:+.1f} ms, p90 {ep - dp:+.1f} ms (dev on etcd vs dev on SQLite)")
    if crun:
        cm, cp = float(crun.group(1)), float(crun.group(2))
        print(f"{'crun run /bin/true (baseline)':<48} n=30   median {cm:8.1f} ms   p90 {cp:8.1f} ms")
        print(f"ratio remote/crun: median {rm / cm:.2f}x; dev/crun: median {dm / cm:.2f}x")
    else:
        print("crun baseline failed:", out.stdout[-500:], out.stderr[-500:])
    for took in bursts:
        print(f"burst: {a.burst} tasks over 3 agents to RUNNING in {took:.2f} s = {a.burst / took:.1f} tasks/s")


if __name__ == "__main__":
    main()
