#!/usr/bin/env python3
"""Client-observed RunTask-to-RUNNING latency and launch throughput of `gantry dev`, with
`crun run` (and `podman run`, when installed) of the same image measured in the same script.

Usage (root, after `cargo build --release --workspace`):
    .venv/bin/python scripts/bench-api.py [--tasks 100] [--burst 200] [--cgroup-favordynmods]

--cgroup-favordynmods runs Gantry with that flag, which turns the kernel setting on for the
whole host until it reboots (README, "Tuning a node"); the script says whether it was on.
"""
import argparse
import os
import shutil
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(__file__))
from benchlib import (bench_gantry, burst, conftest, crun_baseline, histogram_totals,  # noqa: E402
                      one_at_a_time, phase_means, register_bench, report_burst_ceiling, summary)


def favordynmods_on():
    """Whether a cgroup2 mount has favordynmods (the setting is the whole host's)."""
    with open("/proc/self/mountinfo") as f:
        for line in f:
            post = line.split(" - ", 1)[1].split()
            if post[0] == "cgroup2" and "favordynmods" in post[2].split(","):
                return True
    return False


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--tasks", type=int, default=100)
    ap.add_argument("--burst", type=int, default=200)
    ap.add_argument("--cgroup-favordynmods", action="store_true")
    a = ap.parse_args()
    print(f"cgroup favordynmods on before this run: {favordynmods_on()}")
    g = bench_gantry(instance=9)
    if a.cgroup_favordynmods:
        g.env["GANTRY_CGROUP_FAVORDYNMODS"] = "1"
    try:
        g.start()
        ecs = g.client("ecs")
        register_bench(ecs)
        time.sleep(3)  # let the warm pool fill
        before = histogram_totals(g.endpoint)
        stamped = []
        lat = one_at_a_time(ecs, "bench", a.tasks, stamped)
        phases = (before, histogram_totals(g.endpoint))
        time.sleep(3)
        burst_s = burst(ecs, "bench", a.burst)
    finally:
        g.stop()
        log = g.log()
        g.cleanup()
    # Baseline: crun run of an equivalent bundle (gantry debug bench builds it), same machine.
    crun = crun_baseline()
    print(f"RunTask -> RUNNING (client-observed, {a.tasks} tasks, one at a time)")
    med, p90 = summary("gantry RunTask -> RUNNING", lat)
    smed, sp90 = summary("gantry RunTask sent -> its startedAt", stamped)
    print("where the one-at-a-time starts' time went (server and agent):")
    phase_means(*phases)
    if crun:
        cm, cp = crun
        print(f"{'crun run /bin/true (baseline)':<44} n=30   median {cm:8.1f} ms   p90 {cp:8.1f} ms")
        print(f"ratio gantry/crun: median {med / cm:.2f}x, p90 {p90 / cp:.2f}x")
        print(f"ratio gantry (to startedAt)/crun: median {smed / cm:.2f}x, p90 {sp90 / cp:.2f}x")
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
    report_burst_ceiling(a.burst, a.burst / burst_s, "the API's burst")
    print(f"cgroup favordynmods on after this run: {favordynmods_on()}")


if __name__ == "__main__":
    main()
