#!/usr/bin/env python3
"""Client-observed RunTask-to-RUNNING latency and launch throughput of `gantry dev`, with
`crun run` (and `podman run`, when installed) of the same image measured in the same script.

Usage (root, after `cargo build --release --workspace`):
    .venv/bin/python scripts/bench-api.py [--tasks 100] [--burst 200]
"""
import argparse
import os
import re
import shutil
import statistics
import subprocess
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests", "e2e"))
import conftest  # noqa: E402  (the e2e harness starts and cleans up gantry dev)

conftest.GANTRY = os.path.join(conftest.ROOT, "target", "release", "gantry")


def pct(v, p):
    v = sorted(v)
    return v[min(len(v) - 1, round((len(v) - 1) * p))]


def summary(name, ms):
    print(f"{name:<44} n={len(ms):<4} median {statistics.median(ms):8.1f} ms   p90 {pct(ms, 0.9):8.1f} ms")
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


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--tasks", type=int, default=100)
    ap.add_argument("--burst", type=int, default=200)
    a = ap.parse_args()
    g = conftest.Gantry(instance=9)
    g.env["GANTRY_WARM_POOL"] = "16"
    try:
        g.start()
        ecs = g.client("ecs")
        conftest.register(ecs, "bench", [{"name": "app", "command": ["sh", "-c", "trap 'exit 0' TERM; while :; do sleep 1; done"],
                                          "stopTimeout": 2}])
        time.sleep(3)  # let the warm pool fill
        lat = []
        for _ in range(a.tasks):
            t0 = time.perf_counter()
            arn = conftest.run(ecs, "default", "bench")[0]["taskArn"]
            wait_running(ecs, [arn])
            lat.append((time.perf_counter() - t0) * 1000)
            ecs.stop_task(cluster="default", task=arn)
            time.sleep(0.1)  # let the namespace pool refill between samples
        conftest.wait_stopped(ecs, "default", ecs.list_tasks(cluster="default")["taskArns"][:100] or [arn])
        time.sleep(3)
        t0 = time.perf_counter()
        arns = []
        for _ in range(a.burst // 10):
            arns += [t["taskArn"] for t in conftest.run(ecs, "default", "bench", count=10)]
        wait_running(ecs, arns, timeout=600)
        burst_s = time.perf_counter() - t0
        for chunk in [arns[i:i + 100] for i in range(0, len(arns), 100)]:
            for arn in chunk:
                ecs.stop_task(cluster="default", task=arn)
        for chunk in [arns[i:i + 100] for i in range(0, len(arns), 100)]:
            conftest.wait_stopped(ecs, "default", chunk)
    finally:
        g.stop()
        log = g.log()
        g.cleanup()
    # Baseline: crun run of an equivalent bundle (gantry debug bench builds it), same machine.
    out = subprocess.run(["bash", os.path.join(conftest.ROOT, "scripts", "bench.sh")], env=dict(os.environ, RUNS="30"),
                         capture_output=True, text=True)
    crun = re.search(r"crun run \(baseline\)\s+n=\d+\s+median\s+([\d.]+) ms\s+p90\s+([\d.]+)", out.stdout)
    print(f"RunTask -> RUNNING (client-observed, {a.tasks} tasks, one at a time)")
    med, p90 = summary("gantry RunTask -> RUNNING", lat)
    if crun:
        cm, cp = float(crun.group(1)), float(crun.group(2))
        print(f"{'crun run /bin/true (baseline)':<44} n=30   median {cm:8.1f} ms   p90 {cp:8.1f} ms")
        print(f"ratio gantry/crun: median {med / cm:.2f}x, p90 {p90 / cp:.2f}x")
    else:
        print("crun baseline failed:", out.stdout[-500:], out.stderr[-500:])
    if shutil.which("podman"):
        import tempfile
        img = tempfile.mkdtemp()
        subprocess.run([sys.executable, os.path.join(conftest.ROOT, "tests/fixtures/mkimage.py"), img], check=True, capture_output=True)
        subprocess.run(["podman", "load", "-i", os.path.join(img, "docker.tar")], check=True, capture_output=True)
        shutil.rmtree(img)
        # crun refuses this hybrid cgroup host under podman, so podman uses runc; the
        # ulimits stay within this machine's hard limits.
        cmd = ["podman", "--runtime", "runc", "run", "--rm", "--network", "none", "--ulimit", "nofile=1024:1024",
               "--ulimit", "nproc=1024:1024", "gantry-test/busybox:latest", "true"]
        pm = []
        for _ in range(30):
            t0 = time.perf_counter()
            subprocess.run(cmd, check=True, capture_output=True)
            pm.append((time.perf_counter() - t0) * 1000)
        summary("podman --runtime runc run --rm (baseline)", pm)
    else:
        print("podman run: not installed on this machine (apt-get install podman for this baseline)")
    print(f"burst: {a.burst} tasks to RUNNING in {burst_s:.2f} s = {a.burst / burst_s:.1f} tasks/s")


if __name__ == "__main__":
    main()
