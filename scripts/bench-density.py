#!/usr/bin/env python3
"""Does the cost of launching grow with what is already running? `gantry dev` (release) on an
empty node, then with N idle tasks live: the launch rate of a burst of tasks (RunTask calls of
10 until all are RUNNING) in both, their ratio, the CPU the idle node burns, and host memory
per idle task (all processes' RSS and the shims' share).

Usage (root, after `cargo build --release --workspace`):
    .venv/bin/python scripts/bench-density.py [--idle 1000] [--burst 200]
"""
import argparse
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests", "e2e"))
import conftest  # noqa: E402

conftest.GANTRY = os.path.join(conftest.ROOT, "target", "release", "gantry")
NET = {"awsvpcConfiguration": {"subnets": ["subnet-bench"]}}


def running(ecs, arns, timeout=600):
    pending = set(arns)
    deadline = time.time() + timeout
    while pending:
        assert time.time() < deadline, f"{len(pending)} tasks never reached RUNNING"
        chunk = list(pending)[:100]
        for t in ecs.describe_tasks(cluster="default", tasks=chunk)["tasks"]:
            if t["lastStatus"] == "RUNNING":
                pending.discard(t["taskArn"])
            elif t["lastStatus"] == "STOPPED":
                raise AssertionError(f"task stopped: {t.get('stoppedReason')}")
        time.sleep(0.02)


def launch(ecs, family, n):
    """n tasks in RunTask calls of 10; returns (seconds to all RUNNING, arns)."""
    t0 = time.perf_counter()
    arns = []
    while len(arns) < n:
        r = ecs.run_task(cluster="default", taskDefinition=family, count=min(10, n - len(arns)),
                         launchType="FARGATE", networkConfiguration=NET)
        assert not r["failures"], r["failures"]
        arns += [t["taskArn"] for t in r["tasks"]]
    running(ecs, arns)
    return time.perf_counter() - t0, arns


def cpu_seconds(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_kib(match):
    total = 0
    for p in os.listdir("/proc"):
        if not p.isdigit():
            continue
        try:
            with open(f"/proc/{p}/cmdline", "rb") as f:
                cmd = f.read()
            if match(cmd):
                with open(f"/proc/{p}/status") as f:
                    total += next(int(l.split()[1]) for l in f if l.startswith("VmRSS:"))
        except (OSError, StopIteration):
            continue
    return total


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--idle", type=int, default=1000)
    ap.add_argument("--burst", type=int, default=200)
    a = ap.parse_args()
    g = conftest.Gantry(instance=9)
    # Room for the idle tasks' addresses.
    g.node_args[g.node_args.index("--subnet") + 1] = "10.219.0.0/16"
    g.env["GANTRY_WARM_POOL"] = "20"
    try:
        g.start()
        ecs = g.client("ecs")
        for fam, cmd in (("burst", ["sh", "-c", "trap 'exit 0' TERM; while :; do sleep 1; done"]), ("idle", ["sleep", "86400"])):
            conftest.register(ecs, fam, [{"name": "app", "command": cmd, "stopTimeout": 2}])
        time.sleep(3)  # pool warm
        empty, arns = launch(ecs, "burst", a.burst)
        for t in arns:
            ecs.stop_task(cluster="default", task=t)
        time.sleep(5)
        t0 = time.perf_counter()
        launch(ecs, "idle", a.idle)
        print(f"{a.idle} idle tasks RUNNING in {time.perf_counter() - t0:.1f} s")
        time.sleep(5)
        c0, w0 = cpu_seconds(g.proc.pid), time.perf_counter()
        time.sleep(10)
        idle_cpu = (cpu_seconds(g.proc.pid) - c0) / (time.perf_counter() - w0) * 100
        shims = rss_kib(lambda c: c.startswith(b"gantry-shim") or b"/gantry-shim" in c.split(b"\0")[0])
        sleeps = rss_kib(lambda c: c.startswith(b"sleep\x0086400"))
        busy, _ = launch(ecs, "burst", a.burst)
        print(f"burst of {a.burst} on an empty node:       {a.burst / empty:6.1f} tasks/s")
        print(f"burst of {a.burst} with {a.idle} idle tasks: {a.burst / busy:6.1f} tasks/s")
        print(f"ratio busy/empty: {empty / busy:.2f}")
        print(f"gantry dev CPU with {a.idle} idle tasks: {idle_cpu:.1f}% of one core")
        print(f"host memory per idle task: shims {shims / a.idle / 1024:.2f} MiB, the task's own process {sleeps / a.idle / 1024:.2f} MiB")
    finally:
        g.stop()
        g.cleanup()


if __name__ == "__main__":
    main()
