#!/usr/bin/env python3
"""Service benchmark: CreateService (10 tasks) to steady state, and a full rolling deployment
of those 10 tasks (100/200) to steady state; median and p90 of N rounds.

Usage (root, after `cargo build --release --workspace`):
    .venv/bin/python scripts/bench-services.py [--rounds 5] [--tasks 10]
"""
import argparse
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests", "e2e"))
import conftest  # noqa: E402

conftest.GANTRY = os.path.join(conftest.ROOT, "target", "release", "gantry")
LOOP = "trap 'exit 0' TERM; while :; do sleep 1; done"


def wait_steady(ecs, name, td_suffix, desired):
    while True:
        s = ecs.describe_services(cluster="default", services=[name])["services"][0]
        d = s["deployments"]
        if len(d) == 1 and d[0]["rolloutState"] == "COMPLETED" and s["runningCount"] == desired and s["taskDefinition"].endswith(td_suffix):
            return
        time.sleep(0.02)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--tasks", type=int, default=10)
    a = ap.parse_args()
    g = conftest.Gantry(instance=8)
    g.env["GANTRY_WARM_POOL"] = str(2 * a.tasks)
    create, deploy = [], []
    try:
        g.start()
        ecs = g.client("ecs")
        for v in (1, 2):
            conftest.register(ecs, "bsvc", [{"name": "app", "command": ["sh", "-c", f"echo v{v}; {LOOP}"], "stopTimeout": 2}])
        time.sleep(3)
        for r in range(a.rounds):
            name = f"bench-{r}"
            t0 = time.perf_counter()
            ecs.create_service(serviceName=name, taskDefinition="bsvc:1", desiredCount=a.tasks, networkConfiguration=conftest.NETWORK,
                               launchType="FARGATE")
            wait_steady(ecs, name, ":1", a.tasks)
            create.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            ecs.update_service(service=name, taskDefinition="bsvc:2")
            wait_steady(ecs, name, ":2", a.tasks)
            deploy.append(time.perf_counter() - t0)
            ecs.delete_service(service=name, force=True)
            ecs.get_waiter("services_inactive").wait(cluster="default", services=[name], WaiterConfig={"Delay": 1, "MaxAttempts": 120})
            time.sleep(2)  # pool refill
    finally:
        g.stop()
        g.cleanup()
    def show(label, v):
        v = sorted(v)
        p90 = v[min(len(v) - 1, round((len(v) - 1) * 0.9))]
        print(f"{label:<48} n={len(v)}  median {statistics.median(v) * 1000:8.0f} ms  p90 {p90 * 1000:8.0f} ms")
    show(f"CreateService ({a.tasks} tasks) -> steady state", create)
    show(f"rolling deployment of {a.tasks} tasks -> steady", deploy)


if __name__ == "__main__":
    main()
