#!/usr/bin/env python3
"""Cluster mode against `gantry dev`, same script, same machine: client-observed RunTask to
RUNNING one task at a time through a `gantry server` (on a real etcd) and a remote agent over
mutual TLS, through `gantry dev` on the same etcd (the difference is the remote agent
protocol), and through `gantry dev` on SQLite (the difference is etcd's replicated, fsynced
writes); then bursts of tasks over three agents to all RUNNING. `crun run` of an equivalent
bundle is the baseline (scripts/bench.sh, before and after the Gantry samples, the ratios to
the mean of the two), and for the bursts `crun run --detach` of the same number of prepared
bundles, three at a time (scripts/bench.sh burst): what the runtime alone reaches on this
machine.

The three run at once and their starts alternate, one task on each in turn (rotating which
goes first), because this VM drifts by 20% within minutes: measured one after the other,
the differences were the drift's. The two `gantry dev`s are idle during the bursts.

Usage (root, after `cargo build --release --workspace`):
    .venv/bin/python scripts/bench-cluster.py [--tasks 50] [--burst 300] [--rounds 1]
"""
import argparse
import os
import statistics
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(__file__))
from benchlib import (CpuShares, bench_gantry, burst, conftest, crun_baseline, one_at_a_time,  # noqa: E402
                      register_bench, report_burst_ceiling, summary)
import test_cluster  # noqa: E402  (its Server and Agent, with the release binary)
import test_etcd  # noqa: E402

WARM_POOL = "16"


def network_of(ec2):
    """The awsvpcConfiguration of every subnet the setup's nodes have, no public IP."""
    network = conftest.every_subnet(ec2)
    network["awsvpcConfiguration"]["assignPublicIp"] = "DISABLED"
    return network


class Setup:
    """One way of running tasks: its client, the network its tasks go in, and how to stop it."""

    def __init__(self, name, ecs, network, cleanup):
        self.name, self.ecs, self.network, self.cleanup = name, ecs, network, cleanup
        self.lat, self.stamped = [], []
        self.processes = {}  # the setup's own processes by part, for CpuShares


def start_cluster(etcd):
    """A server on `etcd` and three agents in three zones."""
    server = test_cluster.Server(f"etcd://{etcd.address}/bench", "bench")
    agents = [test_cluster.Agent(instance=20 + i) for i in range(3)]

    def cleanup():
        for ag in agents:
            ag.cleanup()
        server.stop()

    try:
        for ag in agents:
            ag.env["GANTRY_WARM_POOL"] = WARM_POOL
            ag.env.update(conftest.UNLIMITED)
        # Gantry's default node timeout: the tests' 5 s (for their node-loss cases) can pass
        # between two heartbeats on two cores saturated by a burst, and the burst then fails.
        server.start(agents[0].env, node_timeout="15")
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
        register_bench(ecs)
        setup = Setup("server + remote agent (etcd, mutual TLS)", ecs, network_of(agents[0].client("ec2")), cleanup)
        setup.processes = {"server": [server.proc.pid], "agents": [ag.proc.pid for ag in agents],
                           "etcd": [etcd.proc.pid]}
        return setup
    except BaseException:
        cleanup()
        raise


def start_dev(instance, name, store=None):
    """A `gantry dev` (on SQLite unless `store` names another)."""
    g = bench_gantry(instance)
    if store:
        g.env["GANTRY_STORE"] = store
    try:
        g.start()
        ecs = g.client("ecs")
        register_bench(ecs)
        return Setup(name, ecs, network_of(g.client("ec2")), g.cleanup)
    except BaseException:
        g.cleanup()
        raise


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--tasks", type=int, default=50)
    ap.add_argument("--burst", type=int, default=300)
    ap.add_argument("--rounds", type=int, default=1)
    a = ap.parse_args()
    # crun is measured before and after the Gantry samples, and the ratios are to the mean of
    # the two: one measurement after alone moved the ratio by as much as the VM drifted.
    crun_before = crun_baseline()
    etcd = test_etcd.Etcd()
    setups = []
    try:
        etcd.start()
        setups.append(start_cluster(etcd))
        setups.append(start_dev(23, "gantry dev on etcd (one process)", f"etcd://{etcd.address}/bench-dev"))
        setups.append(start_dev(24, "gantry dev (one process, SQLite)"))
        time.sleep(3)  # let the warm pools fill
        for r in range(a.tasks):
            for s in setups[r % 3:] + setups[:r % 3]:
                s.lat += one_at_a_time(s.ecs, "bench", 1, stamped=s.stamped, network=s.network)
        bursts, shares = [], []
        for _ in range(a.rounds):
            time.sleep(3)  # the pools refill
            shares.append(CpuShares(setups[0].processes))
            bursts.append(burst(setups[0].ecs, "bench", a.burst, setups[0].network, shares[-1]))
    finally:
        for s in setups:
            s.cleanup()
        etcd.remove()
    remote, dev_etcd, local = (s.lat for s in setups)
    crun_after = crun_baseline()
    print(f"RunTask -> RUNNING (client-observed, {a.tasks} tasks on each, one at a time, alternating)")
    rm, rp = summary("server + remote agent (etcd, mutual TLS)", remote, width=48)
    em, ep = summary("gantry dev on etcd (one process)", dev_etcd, width=48)
    dm, dp = summary("gantry dev (one process, SQLite)", local, width=48)
    print("RunTask sent -> the task's startedAt (the rest is the RUNNING write and the client's polls)")
    for s in setups:
        summary(s.name, s.stamped, width=48)
    print(f"remote agent protocol adds: median {rm - em:+.1f} ms, p90 {rp - ep:+.1f} ms (server+agent vs dev, both on etcd)")
    print(f"etcd adds: median {em - dm:+.1f} ms, p90 {ep - dp:+.1f} ms (dev on etcd vs dev on SQLite)")
    if crun_before and crun_after:
        for when, (m, p) in (("before", crun_before), ("after", crun_after)):
            print(f"{'crun run /bin/true (baseline, ' + when + ')':<48} n=30   median {m:8.1f} ms   p90 {p:8.1f} ms")
        cm = (crun_before[0] + crun_after[0]) / 2
        print(f"ratio to crun's mean median ({cm:.1f} ms): remote {rm / cm:.2f}x; dev on SQLite {dm / cm:.2f}x")
    for took, cpu in zip(bursts, shares):
        print(f"burst: {a.burst} tasks over 3 agents to RUNNING in {took:.2f} s = {a.burst / took:.1f} tasks/s")
        cpu.report(a.burst)
    if bursts:
        report_burst_ceiling(a.burst, a.burst / statistics.median(bursts), "the cluster's median burst")


if __name__ == "__main__":
    main()
