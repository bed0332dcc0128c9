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
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(__file__))
from benchlib import LOOP, burst, conftest, crun_baseline, one_at_a_time, summary  # noqa: E402
import test_cluster  # noqa: E402  (its Server and Agent, with the release binary)
import test_etcd  # noqa: E402

WARM_POOL = "16"


def cluster_phase(a):
    etcd = test_etcd.Etcd()
    server = test_cluster.Server(f"etcd://{etcd.address}/bench", "bench")
    agents = []
    try:
        etcd.start()
        agents = [test_cluster.Agent(instance=20 + i) for i in range(3)]
        for ag in agents:
            ag.env["GANTRY_WARM_POOL"] = WARM_POOL
            ag.env.update(conftest.UNLIMITED)
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
        # The helpers launch into conftest.NETWORK: here, the three agents' subnets.
        conftest.NETWORK["awsvpcConfiguration"]["subnets"] = \
            conftest.every_subnet(agents[0].client("ec2"))["awsvpcConfiguration"]["subnets"]
        time.sleep(3)  # let the warm pools fill
        lat = one_at_a_time(ecs, "bench", a.tasks)
        time.sleep(3)
        bursts = [burst(ecs, "bench", a.burst) for _ in range(a.rounds)]
        return lat, bursts
    finally:
        conftest.NETWORK["awsvpcConfiguration"]["subnets"] = []  # the next gantry dev fills in its own
        for ag in agents:
            ag.cleanup()
        server.stop()
        etcd.remove()


def dev_phase(a, on_etcd):
    g = conftest.Gantry(instance=23)
    g.env["GANTRY_WARM_POOL"] = WARM_POOL
    g.env.update(conftest.UNLIMITED)
    etcd = test_etcd.Etcd() if on_etcd else None
    try:
        if etcd:
            etcd.start()
            g.env["GANTRY_STORE"] = f"etcd://{etcd.address}/bench-dev"
        g.start()
        ecs = g.client("ecs")
        conftest.register(ecs, "bench", [{"name": "app", "command": ["sh", "-c", LOOP], "stopTimeout": 2}])
        time.sleep(3)
        return one_at_a_time(ecs, "bench", a.tasks)
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
    crun = crun_baseline()
    print(f"RunTask -> RUNNING (client-observed, {a.tasks} tasks, one at a time)")
    rm, rp = summary("server + remote agent (etcd, mutual TLS)", remote, width=48)
    em, ep = summary("gantry dev on etcd (one process)", dev_etcd, width=48)
    dm, dp = summary("gantry dev (one process, SQLite)", local, width=48)
    print(f"remote agent protocol adds: median {rm - em:+.1f} ms, p90 {rp - ep:+.1f} ms (server+agent vs dev, both on etcd)")
    print(f"etcd adds: median {em - dm:+.1f} ms, p90 {ep - dp:+.1f} ms (dev on etcd vs dev on SQLite)")
    if crun:
        cm, cp = crun
        print(f"{'crun run /bin/true (baseline)':<48} n=30   median {cm:8.1f} ms   p90 {cp:8.1f} ms")
        print(f"ratio remote/crun: median {rm / cm:.2f}x; dev/crun: median {dm / cm:.2f}x")
    for took in bursts:
        print(f"burst: {a.burst} tasks over 3 agents to RUNNING in {took:.2f} s = {a.burst / took:.1f} tasks/s")


if __name__ == "__main__":
    main()
