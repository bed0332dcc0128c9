#!/usr/bin/env python3
"""Does the cost of launching grow with what is already running? `gantry dev` (release) on an
empty node, then with N idle tasks live: the launch rate of a burst of tasks (RunTask calls of
10 until all are RUNNING) in both, their ratio, the CPU the idle node burns, and host memory
per idle task: what the host lost (MemAvailable before and after, so kernel objects such as
namespaces, veths, cgroups and mounts count too), the shims' and the tasks' own processes'
proportional share (PSS: a page shared by N processes counts 1/N to each; RSS would count the
shim binary's shared pages once per shim). `--perf DIR` records a system-wide profile of both
bursts (perf record -a -g) to compare where the time goes. `--settle S` also prints the idle
node's CPU every 10 s for S seconds after the idle tasks are RUNNING; `--open-group` puts the
tasks in a security group admitting 0.0.0.0/0 rather than the default group (which admits
its own members, so each task joining is a member of every running task's group). Also
printed: `gantry dev`'s own CPU per started task in each burst.

Usage (root, after `cargo build --release --workspace`):
    .venv/bin/python scripts/bench-density.py [--idle 1000] [--burst 200] [--perf DIR] [--settle 80] [--open-group]
"""
import argparse
import os
import signal
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(__file__))
from benchlib import conftest, cpu_seconds, wait_running  # noqa: E402

NET = conftest.NETWORK  # filled in when the first gantry dev starts


def launch(ecs, family, n):
    """n tasks in RunTask calls of 10; returns (seconds to all RUNNING, arns)."""
    t0 = time.perf_counter()
    arns = []
    while len(arns) < n:
        r = ecs.run_task(cluster="default", taskDefinition=family, count=min(10, n - len(arns)),
                         launchType="FARGATE", networkConfiguration=NET)
        assert not r["failures"], r["failures"]
        arns += [t["taskArn"] for t in r["tasks"]]
    wait_running(ecs, arns, timeout=600, poll=0.02)
    return time.perf_counter() - t0, arns


def open_group(ec2):
    """A security group admitting everything from 0.0.0.0/0 (no rule naming a group)."""
    vpc = ec2.describe_vpcs()["Vpcs"][0]["VpcId"]
    sg = ec2.create_security_group(GroupName="open", Description="no self reference", VpcId=vpc)["GroupId"]
    ec2.authorize_security_group_ingress(GroupId=sg, IpPermissions=[{"IpProtocol": "-1", "IpRanges": [{"CidrIp": "0.0.0.0/0"}]}])
    return sg


def pss_kib(match):
    """Summed PSS of the processes whose command line matches."""
    total = 0
    for p in os.listdir("/proc"):
        if not p.isdigit():
            continue
        try:
            with open(f"/proc/{p}/cmdline", "rb") as f:
                cmd = f.read()
            if match(cmd):
                with open(f"/proc/{p}/smaps_rollup") as f:
                    total += next(int(l.split()[1]) for l in f if l.startswith("Pss:"))
        except (OSError, StopIteration):
            continue
    return total


def mem_available_kib():
    with open("/proc/meminfo") as f:
        return next(int(l.split()[1]) for l in f if l.startswith("MemAvailable:"))


def profiled(perf_dir, name, fn):
    """fn() under a system-wide perf record when perf_dir is given."""
    if not perf_dir:
        return fn()
    os.makedirs(perf_dir, exist_ok=True)
    rec = subprocess.Popen(["perf", "record", "-a", "-g", "-F", "499", "-o", os.path.join(perf_dir, f"{name}.data")],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(1)
    try:
        return fn()
    finally:
        rec.send_signal(signal.SIGINT)
        rec.wait()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--idle", type=int, default=1000)
    ap.add_argument("--burst", type=int, default=200)
    ap.add_argument("--perf", help="directory for perf profiles of the two bursts")
    ap.add_argument("--settle", type=int, default=0, help="seconds of CPU samples (every 10 s) after the idle launch")
    ap.add_argument("--open-group", action="store_true", help="tasks in a group admitting 0.0.0.0/0, not the default")
    a = ap.parse_args()
    g = conftest.Gantry(instance=9)
    # Room for the idle tasks' addresses.
    g.node_args[g.node_args.index("--subnet") + 1] = "10.219.0.0/16"
    g.env["GANTRY_WARM_POOL"] = "20"
    g.env.update(conftest.UNLIMITED)
    try:
        g.start()
        ecs = g.client("ecs")
        for fam, cmd in (("burst", ["sh", "-c", "trap 'exit 0' TERM; while :; do sleep 1; done"]), ("idle", ["sleep", "86400"])):
            conftest.register(ecs, fam, [{"name": "app", "command": cmd, "stopTimeout": 2}])
        if a.open_group:
            NET["awsvpcConfiguration"]["securityGroups"] = [open_group(g.client("ec2"))]
        time.sleep(3)  # pool warm
        c0 = cpu_seconds(g.proc.pid)
        empty, arns = profiled(a.perf, "empty", lambda: launch(ecs, "burst", a.burst))
        empty_cpu = (cpu_seconds(g.proc.pid) - c0) / a.burst * 1000
        for t in arns:
            ecs.stop_task(cluster="default", task=t)
        time.sleep(5)
        available = mem_available_kib()
        t0 = time.perf_counter()
        launch(ecs, "idle", a.idle)
        print(f"{a.idle} idle tasks RUNNING in {time.perf_counter() - t0:.1f} s")
        for i in range(a.settle // 10):
            c0, w0 = cpu_seconds(g.proc.pid), time.perf_counter()
            time.sleep(10)
            print(f"  {10 * (i + 1)} s after: gantry dev CPU "
                  f"{(cpu_seconds(g.proc.pid) - c0) / (time.perf_counter() - w0) * 100:.1f}% of one core", flush=True)
        time.sleep(5)
        c0, w0 = cpu_seconds(g.proc.pid), time.perf_counter()
        time.sleep(10)
        idle_cpu = (cpu_seconds(g.proc.pid) - c0) / (time.perf_counter() - w0) * 100
        lost = available - mem_available_kib()
        shims = pss_kib(lambda c: c.startswith(b"gantry-shim") or b"/gantry-shim" in c.split(b"\0")[0])
        sleeps = pss_kib(lambda c: c.startswith(b"sleep\x0086400"))
        c0 = cpu_seconds(g.proc.pid)
        busy, _ = profiled(a.perf, "busy", lambda: launch(ecs, "burst", a.burst))
        busy_cpu = (cpu_seconds(g.proc.pid) - c0) / a.burst * 1000
        print(f"burst of {a.burst} on an empty node:       {a.burst / empty:6.1f} tasks/s")
        print(f"burst of {a.burst} with {a.idle} idle tasks: {a.burst / busy:6.1f} tasks/s")
        print(f"ratio busy/empty: {empty / busy:.2f}")
        print(f"gantry dev's own CPU per started task: {empty_cpu:.1f} ms on the empty node, {busy_cpu:.1f} ms beside the idle tasks")
        print(f"gantry dev CPU with {a.idle} idle tasks: {idle_cpu:.1f}% of one core")
        per = lambda kib: kib / a.idle / 1024  # noqa: E731
        print(f"host memory per idle task (MemAvailable lost): {per(lost):.2f} MiB; of it the task's own process "
              f"{per(sleeps):.2f} MiB (PSS), so Gantry's overhead {per(lost - sleeps):.2f} MiB, "
              f"of which the shim {per(shims):.2f} MiB (PSS)")
    finally:
        g.stop()
        g.cleanup()


if __name__ == "__main__":
    main()
