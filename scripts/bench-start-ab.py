#!/usr/bin/env python3
"""Task starts of this build against another build of Gantry, interleaved in one run.

This VM drifts: the same build measured twice a few minutes apart can differ by 20%, more
than most changes to a start are worth. So both builds run at once (two `gantry dev`s, each
with its own bridge, subnet and directories, both idle but for what is asked of them), and
the measurements alternate: one task on one, then one on the other, round after round; then
bursts, alternating which goes first. Drift then shifts both sides alike.

Reported, each side: RunTask -> RUNNING as the client sees it (boto3, DescribeTasks every
5 ms), RunTask sent -> the task's own startedAt (leaves the polling out), and bursts of
RunTask calls of 10 until all are RUNNING (`--bursts`, two by default), how many times the
node wrote each task's record on its way to RUNNING (on etcd each is a replicated, fsynced
write); and this build's medians over the other's.

With --etcd both keep their state in one etcd (Debian's etcd-server, started here on loopback
ports in a temporary directory), each under its own prefix, as a server does, instead of
SQLite: a start's store reads and writes are then network round trips and fsynced writes.

With --phases each side also prints where its one-at-a-time starts went, from its own
/metrics: the means of RunTask's and DescribeTasks' time inside the server and of the agent's
start phases (pull, sandbox, containers, start, total).

"This build" is target/release/gantry, or GANTRY_BINARY's, as in the other benchmarks.

Usage (root, after `cargo build --release --workspace` here and in the other checkout):
    .venv/bin/python scripts/bench-start-ab.py --against OTHER/target/release/gantry [--tasks 40] [--burst 200] [--bursts 2] [--crun] [--etcd] [--phases]
"""
import argparse
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(__file__))
from benchlib import (bench_gantry, burst, conftest, crun_baseline, histogram_totals, one_at_a_time, pct,  # noqa: E402
                      phase_means, register_bench)
import test_etcd  # noqa: E402  (one etcd member on loopback, with --etcd)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--against", required=True, help="the other build's gantry binary")
    ap.add_argument("--tasks", type=int, default=40, help="one-at-a-time starts on each side")
    ap.add_argument("--burst", type=int, default=200, help="tasks per burst")
    ap.add_argument("--bursts", type=int, default=2, help="bursts on each side (alternating which goes first)")
    ap.add_argument("--crun", action="store_true", help="also `crun run` of the same image (scripts/bench.sh) after")
    ap.add_argument("--etcd", action="store_true", help="both on one etcd, each under its own prefix")
    ap.add_argument("--phases", action="store_true",
                    help="also where each side's one-at-a-time starts went, from its own histograms (means)")
    a = ap.parse_args()
    this = conftest.GANTRY  # this checkout's release build, or GANTRY_BINARY's (benchlib)
    sides = {"this": {"binary": this}, "other": {"binary": os.path.abspath(a.against)}}
    for s in sides.values():
        assert os.path.exists(s["binary"]), f"{s['binary']} not built"
        s.update(client=[], stamped=[], writes=[], bursts=[])
    etcd = test_etcd.Etcd() if a.etcd else None
    try:
        if etcd:
            etcd.start()
        for i, (name, s) in enumerate(sides.items()):
            conftest.GANTRY = s["binary"]  # read as the instance loads its image and starts
            s["g"] = bench_gantry(instance=11 + i)
            if etcd:
                s["g"].env["GANTRY_STORE"] = f"etcd://{etcd.address}/ab-{name}"
            s["g"].start()
            s["ecs"] = s["g"].client("ecs")
            register_bench(s["ecs"])
        time.sleep(3)  # let the warm pools fill
        names = list(sides)
        endpoint = lambda s: f"http://127.0.0.1:{s['g'].port}"  # noqa: E731
        for s in sides.values():
            s["histograms"] = histogram_totals(endpoint(s)) if a.phases else None
        for r in range(a.tasks):
            for name in (names if r % 2 == 0 else reversed(names)):
                s = sides[name]
                s["client"] += one_at_a_time(s["ecs"], "bench", 1, s["stamped"], writes=s["writes"])
        if a.phases:
            for s in sides.values():
                s["histograms"] = (s["histograms"], histogram_totals(endpoint(s)))
        for b in range(a.bursts):
            for name in (names if b % 2 == 0 else reversed(names)):
                time.sleep(3)  # the pools refill after the last burst
                s = sides[name]
                s["bursts"].append(a.burst / burst(s["ecs"], "bench", a.burst))
    finally:
        for s in sides.values():
            if "g" in s:
                s["g"].cleanup()
        if etcd:
            etcd.remove()
    print(f"interleaved{' on etcd' if etcd else ''}, {a.tasks} one-at-a-time starts and {a.bursts} bursts of {a.burst} on each side")
    for name, s in sides.items():
        print(f"{name:<6} {s['binary']}")
        print(f"  RunTask -> RUNNING (client)   median {statistics.median(s['client']):6.1f} ms   p90 {pct(s['client'], 0.9):6.1f} ms")
        print(f"  RunTask sent -> startedAt     median {statistics.median(s['stamped']):6.1f} ms   p90 {pct(s['stamped'], 0.9):6.1f} ms")
        print(f"  bursts                        {', '.join(f'{b:.1f}' for b in s['bursts'])} tasks/s")
        print(f"  the node's record writes per start: median {statistics.median(s['writes']):g}, "
              f"max {max(s['writes'])} (to RUNNING, after RunTask's)")
        if a.phases:
            phase_means(*s["histograms"])
    t, o = sides["this"], sides["other"]
    ratio = lambda k: statistics.median(t[k]) / statistics.median(o[k])  # noqa: E731
    crun = crun_baseline() if a.crun else None
    if crun:
        print(f"crun run /bin/true (baseline, after)  median {crun[0]:6.1f} ms   p90 {crun[1]:6.1f} ms")
        for name, s in sides.items():
            print(f"  {name}/crun: client median {statistics.median(s['client']) / crun[0]:.2f}x, "
                  f"startedAt median {statistics.median(s['stamped']) / crun[0]:.2f}x")
    bursts = (f", burst rate {statistics.mean(t['bursts']) / statistics.mean(o['bursts']):.2f}x"
              if t["bursts"] and o["bursts"] else "")
    print(f"this/other: client median {ratio('client'):.2f}x, startedAt median {ratio('stamped'):.2f}x{bursts}")


if __name__ == "__main__":
    main()
