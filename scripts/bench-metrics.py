#!/usr/bin/env python3
"""CloudWatch metrics and autoscaling against `gantry dev`, each with a baseline measured in
the same run:

- PutMetricData ingestion: datapoints per second with requests of 20 metrics x 150 values,
  against the latency of a request of one datapoint (the protocol's floor);
- GetMetricData over 1,000 series (2 calls of 500 queries, an hour of 10-second points each),
  against GetMetricData of one series;
- scale-out: a CPU step in a target-tracked service's task to a second task RUNNING, against
  RunTask to RUNNING of the same task definition (the floor of any scale-out).

Usage (root, after `cargo build --release --workspace`):
    .venv/bin/python scripts/bench-metrics.py [--puts 50] [--rounds 5]
"""
import argparse
import datetime
import os
import random
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(__file__))
from benchlib import conftest, one_at_a_time, summary  # noqa: E402


def now():
    return datetime.datetime.now(datetime.timezone.utc)


def timed(f):
    t0 = time.perf_counter()
    f()
    return (time.perf_counter() - t0) * 1000


def ingestion(cw, puts):
    one = [timed(lambda: cw.put_metric_data(Namespace="Bench/one", MetricData=[{"MetricName": "m", "Value": 1.0}]))
           for _ in range(puts)]
    values = [float(v) for v in range(150)]
    big = []
    for i in range(puts):
        data = [{"MetricName": f"m{k}", "Values": values, "StorageResolution": 1,
                 "Dimensions": [{"Name": "Task", "Value": str(i % 50)}]} for k in range(20)]
        big.append(timed(lambda: cw.put_metric_data(Namespace="Bench/ingest", MetricData=data)))
    print("PutMetricData")
    summary("  1 datapoint (baseline)", one)
    m, _ = summary("  20 metrics x 150 values", big)
    print(f"  ingestion: {3000 / (m / 1000):,.0f} datapoints/s at the median; "
          f"{3000 * len(big) / (sum(big) / 1000):,.0f} over the run")


def query_latency(cw, rounds):
    start = now() - datetime.timedelta(hours=1)
    for batch in range(0, 1000, 50):
        data = []
        for s in range(batch, batch + 50):
            # An hour of 10-second points per series, as 20 statistic sets per request.
            for k in range(0, 360, 18):
                data.append({"MetricName": "cpu", "Dimensions": [{"Name": "Series", "Value": str(s)}],
                             "Timestamp": start + datetime.timedelta(seconds=10 * k), "StorageResolution": 1,
                             "Values": [float(j % 100) for j in range(18)]})
        for i in range(0, len(data), 1000):
            cw.put_metric_data(Namespace="Bench/query", MetricData=data[i:i + 1000])

    def q(series):
        return [{"Id": f"s{s}", "MetricStat": {"Metric": {"Namespace": "Bench/query", "MetricName": "cpu",
                                                          "Dimensions": [{"Name": "Series", "Value": str(s)}]},
                                               "Period": 60, "Stat": "Average"}} for s in series]
    end = now()
    one = [timed(lambda: cw.get_metric_data(MetricDataQueries=q([0]), StartTime=start, EndTime=end))
           for _ in range(rounds * 4)]
    thousand = []
    for _ in range(rounds):
        thousand.append(timed(lambda: [cw.get_metric_data(MetricDataQueries=q(range(h, h + 500)), StartTime=start, EndTime=end)
                                       for h in (0, 500)]))
    print("GetMetricData (1 hour, 60 s periods)")
    summary("  1 series (baseline)", one)
    m, _ = summary("  1,000 series (2 calls of 500)", thousand)
    print(f"  ratio to one series: {m / statistics.median(one):.1f}x for 1,000x the series")


def scale_out(g, ecs, rounds):
    ecs.create_cluster(clusterName="bench")
    aas = g.client("application-autoscaling")
    # The step comes at a random phase of the node's 10-second sampling.
    script = "trap 'exit 0' TERM; while [ $(date +%s) -lt $START ]; do sleep 0.1; done; while :; do :; done"
    lat = []
    for r in range(rounds):
        start = int(time.time()) + 8 + random.randrange(10)
        conftest.register(ecs, f"burn{r}", [{"name": "app", "command": ["sh", "-c", script],
                                             "environment": [{"name": "START", "value": str(start)}]}])
        name = f"burn{r}"
        ecs.create_service(cluster="bench", serviceName=name, taskDefinition=name, desiredCount=1,
                           networkConfiguration=conftest.NETWORK, launchType="FARGATE")
        ecs.get_waiter("services_stable").wait(cluster="bench", services=[name], WaiterConfig={"Delay": 0.5, "MaxAttempts": 120})
        resource = f"service/bench/{name}"
        aas.register_scalable_target(ServiceNamespace="ecs", ResourceId=resource, ScalableDimension="ecs:service:DesiredCount",
                                     MinCapacity=1, MaxCapacity=2)
        aas.put_scaling_policy(PolicyName="cpu", ServiceNamespace="ecs", ResourceId=resource,
                               ScalableDimension="ecs:service:DesiredCount", PolicyType="TargetTrackingScaling",
                               TargetTrackingScalingPolicyConfiguration={
                                   "TargetValue": 50.0, "PredefinedMetricSpecification": {
                                       "PredefinedMetricType": "ECSServiceAverageCPUUtilization"}})
        while time.time() < start:
            time.sleep(0.01)
        t0 = time.perf_counter()
        while True:
            s = ecs.describe_services(cluster="bench", services=[name])["services"][0]
            if s["runningCount"] >= 2:
                break
            assert time.perf_counter() - t0 < 120, "no scale-out"
            time.sleep(0.05)
        lat.append((time.perf_counter() - t0) * 1000)
        aas.deregister_scalable_target(ServiceNamespace="ecs", ResourceId=resource, ScalableDimension="ecs:service:DesiredCount")
        ecs.delete_service(cluster="bench", service=name, force=True)
    base = one_at_a_time(ecs, "burn0", rounds * 2)
    interval = g.env.get("GANTRY_METRICS_INTERVAL")
    print(f"Scale-out (metrics every {interval} s, 10-second alarm periods, evaluation every second)")
    summary("  RunTask -> RUNNING (baseline)", base)
    summary("  CPU step -> second task RUNNING", lat)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--puts", type=int, default=50)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--metrics-interval", default="10")
    a = ap.parse_args()
    g = conftest.Gantry(instance=8)
    g.env["GANTRY_METRICS_INTERVAL"] = a.metrics_interval
    g.env.update(conftest.UNLIMITED)
    try:
        g.start()
        cw = g.client("cloudwatch")
        ingestion(cw, a.puts)
        query_latency(cw, a.rounds)
        scale_out(g, g.client("ecs"), a.rounds)
        size = os.path.getsize(os.path.join(g.dir, "data", "metrics.db"))
        print(f"metrics.db after the run: {size / 1e6:.1f} MB")
    finally:
        g.stop()
        g.cleanup()


if __name__ == "__main__":
    main()
