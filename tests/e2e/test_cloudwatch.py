"""CloudWatch metrics (monitoring) with boto3 and awscli unchanged: PutMetricData round trips
through GetMetricStatistics (percentiles against known data) and GetMetricData (math, paging),
ListMetrics, and CloudWatch's errors, over JSON 1.0 (what botocore speaks) and Query (what
older clients speak: a botocore model limited to Query stands in for them)."""
import copy
import datetime
import json
import os
import time

import boto3
import botocore.config
import botocore.exceptions
import botocore.loaders
import botocore.session
import pytest

from conftest import KEY, NETWORK, REGION, SECRET, register, subnets


@pytest.fixture
def cw(gantry):
    return gantry.client("cloudwatch")


@pytest.fixture
def cw_query(gantry, tmp_path):
    """A client that speaks Query only, as pre-JSON SDKs do."""
    loader = botocore.loaders.Loader()
    model = copy.deepcopy(loader.load_service_model("cloudwatch", "service-2"))
    model["metadata"]["protocol"] = "query"
    model["metadata"]["protocols"] = ["query"]
    version = model["metadata"]["apiVersion"]
    os.makedirs(tmp_path / "cloudwatch" / version)
    with open(tmp_path / "cloudwatch" / version / "service-2.json", "w") as f:
        json.dump(model, f)
    session = botocore.session.get_session()
    session.get_component("data_loader").search_paths.insert(0, str(tmp_path))
    return boto3.Session(botocore_session=session).client(
        "cloudwatch", endpoint_url=gantry.endpoint, region_name=REGION, aws_access_key_id=KEY,
        aws_secret_access_key=SECRET, config=botocore.config.Config(retries={"max_attempts": 1}))


def minute(offset=0):
    now = datetime.datetime.now(datetime.timezone.utc).replace(second=0, microsecond=0)
    return now + datetime.timedelta(minutes=offset)


def code_of(call, **kw):
    with pytest.raises(botocore.exceptions.ClientError) as e:
        call(**kw)
    return e.value.response["Error"]["Code"], e.value.response["Error"]["Message"]


@pytest.mark.parametrize("protocol", ["json", "query"])
def test_put_and_get_statistics_with_percentiles(request, protocol):
    cw = request.getfixturevalue("cw" if protocol == "json" else "cw_query")
    ns = f"E2E/{protocol}"
    t = minute(-10)
    dims = [{"Name": "Service", "Value": "web"}]
    cw.put_metric_data(Namespace=ns, MetricData=[
        {"MetricName": "Latency", "Dimensions": dims, "Timestamp": t, "Unit": "Milliseconds",
         "Values": [float(v) for v in range(1, 101)]},
        {"MetricName": "Latency", "Dimensions": dims, "Timestamp": t + datetime.timedelta(minutes=1),
         "Unit": "Milliseconds", "StatisticValues": {"SampleCount": 4, "Sum": 40, "Minimum": 5, "Maximum": 15}},
    ])
    out = cw.get_metric_statistics(Namespace=ns, MetricName="Latency", Dimensions=dims, StartTime=t,
                                   EndTime=t + datetime.timedelta(minutes=2), Period=60,
                                   Statistics=["SampleCount", "Average", "Minimum", "Maximum", "Sum"])
    points = sorted(out["Datapoints"], key=lambda d: d["Timestamp"])
    assert out["Label"] == "Latency"
    assert [(p["Timestamp"], p["SampleCount"], p["Average"], p["Minimum"], p["Maximum"], p["Unit"]) for p in points] == [
        (t, 100.0, 50.5, 1.0, 100.0, "Milliseconds"),
        (t + datetime.timedelta(minutes=1), 4.0, 10.0, 5.0, 15.0, "Milliseconds"),
    ]
    pct = cw.get_metric_statistics(Namespace=ns, MetricName="Latency", Dimensions=dims, StartTime=t,
                                   EndTime=t + datetime.timedelta(minutes=1), Period=60,
                                   ExtendedStatistics=["p50", "p90", "p99.9"])
    assert pct["Datapoints"][0]["ExtendedStatistics"] == {"p50": 50.0, "p90": 90.0, "p99.9": 100.0}
    # Without the dimension it is another metric, with no data.
    none = cw.get_metric_statistics(Namespace=ns, MetricName="Latency", StartTime=t,
                                    EndTime=t + datetime.timedelta(minutes=2), Period=60, Statistics=["Sum"])
    assert none["Datapoints"] == []


@pytest.mark.parametrize("protocol", ["json", "query"])
def test_errors_carry_cloudwatch_codes(request, protocol):
    cw = request.getfixturevalue("cw" if protocol == "json" else "cw_query")
    t = minute(-5)
    code, msg = code_of(cw.put_metric_data, Namespace="AWS/ECS", MetricData=[{"MetricName": "x", "Value": 1}])
    assert code == "InvalidParameterValue" and "AWS/" in msg
    code, msg = code_of(cw.put_metric_data, Namespace="E2E", MetricData=[
        {"MetricName": "x", "Value": 1, "StatisticValues": {"SampleCount": 1, "Sum": 1, "Minimum": 1, "Maximum": 1}}])
    assert code == "InvalidParameterCombination" and "mutually exclusive" in msg
    code, _ = code_of(cw.put_metric_data, Namespace="E2E", MetricData=[{"MetricName": "x"}])
    assert code == "MissingParameter"
    code, msg = code_of(cw.get_metric_statistics, Namespace="E2E", MetricName="x", StartTime=t,
                        EndTime=t + datetime.timedelta(minutes=1), Period=60, Statistics=["Sum"],
                        ExtendedStatistics=["p90"])
    assert code == "InvalidParameterCombination"
    code, msg = code_of(cw.get_metric_statistics, Namespace="E2E", MetricName="x", StartTime=t,
                        EndTime=t + datetime.timedelta(days=2), Period=60, Statistics=["Sum"])
    assert code == "InvalidParameterValue" and "1,440" in msg
    # The model's own constraints (a namespace of 300 characters).
    code, _ = code_of(cw.put_metric_data, Namespace="N" * 300, MetricData=[{"MetricName": "x", "Value": 1}])
    assert code == "InvalidParameterValue"
    # An operation Gantry does not serve yet is named.
    code, msg = code_of(cw.list_dashboards)
    assert code == "InvalidAction" and "ListDashboards" in msg


def test_large_puts_arrive_gzip_compressed(cw):
    """botocore gzips PutMetricData bodies over 10 KB (Content-Encoding: gzip)."""
    captured = {}
    cw.meta.events.register("before-send.cloudwatch.PutMetricData",
                            lambda request, **kw: captured.update(encoding=request.headers.get("Content-Encoding")))
    t = minute(-3)
    data = [{"MetricName": f"m{k}", "Timestamp": t, "Values": [float(v) for v in range(150)]} for k in range(20)]
    cw.put_metric_data(Namespace="E2E/gzip", MetricData=data)
    assert captured["encoding"] == b"gzip" or captured["encoding"] == "gzip", captured
    out = cw.get_metric_statistics(Namespace="E2E/gzip", MetricName="m19", StartTime=t,
                                   EndTime=t + datetime.timedelta(minutes=1), Period=60, Statistics=["SampleCount"])
    assert out["Datapoints"][0]["SampleCount"] == 150.0


def test_metric_data_math_and_paging(cw):
    t = minute(-20)
    data = []
    for m in range(5):
        ts = t + datetime.timedelta(minutes=m)
        data += [{"MetricName": "Requests", "Timestamp": ts, "Value": 10.0 * (m + 1)},
                 {"MetricName": "Errors", "Timestamp": ts, "Value": float(m + 1)}]
    cw.put_metric_data(Namespace="E2E/math", MetricData=data)

    def stat(name):
        return {"Metric": {"Namespace": "E2E/math", "MetricName": name}, "Period": 60, "Stat": "Sum"}
    queries = [{"Id": "r", "MetricStat": stat("Requests"), "ReturnData": False},
               {"Id": "e", "MetricStat": stat("Errors")},
               {"Id": "rate", "Expression": "100 * e / r", "Label": "Error rate"}]
    end = t + datetime.timedelta(minutes=5)
    out = cw.get_metric_data(MetricDataQueries=queries, StartTime=t, EndTime=end, ScanBy="TimestampAscending")
    results = {r["Id"]: r for r in out["MetricDataResults"]}
    assert set(results) == {"e", "rate"}
    assert results["e"]["Values"] == [1.0, 2.0, 3.0, 4.0, 5.0]
    assert results["e"]["Timestamps"][0] == t
    assert results["rate"]["Label"] == "Error rate" and results["rate"]["Values"] == [10.0] * 5
    assert all(r["StatusCode"] == "Complete" for r in out["MetricDataResults"])
    # botocore's paginator walks pages of 4 datapoints and sees each exactly once.
    pages = cw.get_paginator("get_metric_data").paginate(
        MetricDataQueries=queries, StartTime=t, EndTime=end, MaxDatapoints=4)
    seen = [(r["Id"], v) for page in pages for r in page["MetricDataResults"] for v in r["Values"]]
    assert sorted(seen) == sorted([("e", float(v)) for v in range(1, 6)] + [("rate", 10.0)] * 5)
    code, _ = code_of(cw.get_metric_data, MetricDataQueries=[{"Id": "x", "Expression": "nope * 2"}],
                      StartTime=t, EndTime=end)
    assert code == "InvalidParameterValue"


def test_list_metrics_and_the_cli(gantry, cw):
    # awscli's put-metric-data takes dimensions as Name=Value pairs (its own shorthand).
    gantry.aws("cloudwatch", "put-metric-data", "--namespace", "E2E/cli", "--metric-name", "Queue",
               "--dimensions", "Queue=jobs", "--value", "7", "--unit", "Count")
    listed = cw.list_metrics(Namespace="E2E/cli")["Metrics"]
    assert listed == [{"Namespace": "E2E/cli", "MetricName": "Queue", "Dimensions": [{"Name": "Queue", "Value": "jobs"}]}]
    assert cw.list_metrics(Namespace="E2E/cli", Dimensions=[{"Name": "Queue"}], RecentlyActive="PT3H")["Metrics"] == listed
    assert cw.list_metrics(Namespace="E2E/cli", Dimensions=[{"Name": "Queue", "Value": "other"}])["Metrics"] == []
    now = datetime.datetime.now(datetime.timezone.utc)
    got, _ = gantry.aws("cloudwatch", "get-metric-statistics", "--namespace", "E2E/cli", "--metric-name", "Queue",
                        "--dimensions", "Name=Queue,Value=jobs", "--statistics", "Maximum", "--period", "60",
                        "--start-time", (now - datetime.timedelta(minutes=5)).isoformat(),
                        "--end-time", (now + datetime.timedelta(minutes=1)).isoformat())
    assert [d["Maximum"] for d in got["Datapoints"]] == [7.0]


def test_ecs_publishes_cpu_and_memory_utilization(gantry, ecs, cw):
    """Each node samples its running tasks (every 2 s in the tests, 10 s by default) and
    Gantry publishes AWS/ECS CPUUtilization and MemoryUtilization per cluster and service,
    as ECS does: a CPU burner held to 0.25 vCPU runs near 100%, an idle task near 0%."""
    ecs.create_cluster(clusterName="metrics")
    register(ecs, "cw-burn", [{"name": "burn", "command": ["sh", "-c", "trap 'exit 0' TERM; while :; do :; done"]}])
    register(ecs, "cw-idle", [{"name": "idle", "command": ["sleep", "3600"]}])
    for name in ("burn", "idle"):
        ecs.create_service(cluster="metrics", serviceName=name, taskDefinition=f"cw-{name}", desiredCount=1,
                           networkConfiguration=NETWORK, launchType="FARGATE")
    ecs.get_waiter("services_stable").wait(cluster="metrics", services=["burn", "idle"],
                                           WaiterConfig={"Delay": 1, "MaxAttempts": 60})

    def query(metric, service):
        return {"Id": f"{metric.lower()}_{service}", "MetricStat": {"Metric": {
            "Namespace": "AWS/ECS", "MetricName": metric,
            "Dimensions": [{"Name": "ClusterName", "Value": "metrics"}, {"Name": "ServiceName", "Value": service}]},
            "Period": 10, "Stat": "Average"}}
    queries = [query(m, s) for m in ("CPUUtilization", "MemoryUtilization") for s in ("burn", "idle")]
    deadline = time.time() + 60
    while True:
        now = datetime.datetime.now(datetime.timezone.utc)
        out = cw.get_metric_data(MetricDataQueries=queries, StartTime=now - datetime.timedelta(minutes=5),
                                 EndTime=now + datetime.timedelta(minutes=1), ScanBy="TimestampDescending")
        values = {r["Id"]: r["Values"] for r in out["MetricDataResults"]}
        # The newest complete period (the first may still be filling).
        if all(len(v) >= 3 for v in values.values()):
            break
        assert time.time() < deadline, f"no AWS/ECS datapoints: {values}"
        time.sleep(2)
    assert values["cpuutilization_burn"][1] > 60, values
    assert values["cpuutilization_idle"][1] < 10, values
    assert 0 < values["memoryutilization_idle"][1] < 50, values
    listed = cw.list_metrics(Namespace="AWS/ECS", MetricName="CPUUtilization",
                             Dimensions=[{"Name": "ServiceName", "Value": "burn"}])["Metrics"]
    assert listed == [{"Namespace": "AWS/ECS", "MetricName": "CPUUtilization", "Dimensions": [
        {"Name": "ClusterName", "Value": "metrics"}, {"Name": "ServiceName", "Value": "burn"}]}]
    for name in ("burn", "idle"):
        ecs.delete_service(cluster="metrics", service=name, force=True)


def test_alarm_goes_to_alarm_and_back_with_history(cw):
    """A 10-second alarm over high-resolution data: the leader's evaluator moves it to ALARM
    when 2 of the last 3 periods breach, to OK when they stop, and records both."""
    cw.put_metric_alarm(AlarmName="e2e-high", Namespace="E2E/alarm", MetricName="Load", Statistic="Maximum",
                        Period=10, EvaluationPeriods=3, DatapointsToAlarm=2, Threshold=5.0,
                        ComparisonOperator="GreaterThanThreshold", TreatMissingData="notBreaching")
    alarm = cw.describe_alarms(AlarmNames=["e2e-high"])["MetricAlarms"][0]
    assert alarm["StateValue"] == "INSUFFICIENT_DATA" and alarm["Period"] == 10

    def publish(value, seconds):
        now = datetime.datetime.now(datetime.timezone.utc)
        cw.put_metric_data(Namespace="E2E/alarm", MetricData=[
            {"MetricName": "Load", "Value": value, "StorageResolution": 1, "Timestamp": now - datetime.timedelta(seconds=s)}
            for s in range(0, seconds, 5)])

    def wait_state(state):
        deadline = time.time() + 60
        while time.time() < deadline:
            a = cw.describe_alarms(AlarmNames=["e2e-high"])["MetricAlarms"][0]
            if a["StateValue"] == state:
                return a
            time.sleep(1)
        raise AssertionError(f"alarm never reached {state}: {a}")
    publish(9.0, 40)
    a = wait_state("ALARM")
    assert a["StateReason"].startswith("Threshold Crossed") and "greater than the threshold (5.0)" in a["StateReason"]
    assert json.loads(a["StateReasonData"])["threshold"] == 5.0
    # Quiet: with notBreaching, the periods without data count as fine.
    a = wait_state("OK")
    history = cw.describe_alarm_history(AlarmName="e2e-high", HistoryItemType="StateUpdate")["AlarmHistoryItems"]
    assert [h["HistorySummary"] for h in history][:2] == ["Alarm updated from ALARM to OK",
                                                          "Alarm updated from INSUFFICIENT_DATA to ALARM"]
    cw.set_alarm_state(AlarmName="e2e-high", StateValue="ALARM", StateReason="drill")
    # The evaluator may move it back to OK at its next run (as CloudWatch's does): the history
    # keeps the drill either way.
    history = cw.describe_alarm_history(AlarmName="e2e-high", HistoryItemType="StateUpdate")["AlarmHistoryItems"]
    drills = [json.loads(h["HistoryData"])["newState"] for h in history
              if h["HistorySummary"] == "Alarm updated from OK to ALARM"]
    assert drills and drills[0]["stateReason"] == "drill", history
    code, _ = code_of(cw.delete_alarms, AlarmNames=["e2e-high", "e2e-none"])
    assert code == "ResourceNotFound"
    cw.delete_alarms(AlarmNames=["e2e-high"])
    assert cw.describe_alarms(AlarmNames=["e2e-high"])["MetricAlarms"] == []


def test_a_deployment_alarm_rolls_the_deployment_back(gantry, ecs, cw):
    ecs.create_cluster(clusterName="guarded")
    register(ecs, "guarded", [{"name": "app", "command": ["sleep", "3600"]}])
    register(ecs, "guarded", [{"name": "app", "command": ["sleep", "3601"]}])
    cw.put_metric_alarm(AlarmName="guard-5xx", Namespace="E2E/guard", MetricName="5xx", Statistic="Sum", Period=60,
                        EvaluationPeriods=1, Threshold=1.0, ComparisonOperator="GreaterThanThreshold")
    config = {"alarms": {"alarmNames": ["guard-5xx"], "enable": True, "rollback": True}}
    ecs.create_service(cluster="guarded", serviceName="api", taskDefinition="guarded:1", desiredCount=1,
                       networkConfiguration=NETWORK, launchType="FARGATE", deploymentConfiguration=config)
    ecs.get_waiter("services_stable").wait(cluster="guarded", services=["api"], WaiterConfig={"Delay": 1, "MaxAttempts": 60})
    s = ecs.describe_services(cluster="guarded", services=["api"])["services"][0]
    assert s["deploymentConfiguration"]["alarms"] == config["alarms"]
    ecs.update_service(cluster="guarded", service="api", taskDefinition="guarded:2")
    # Errors in the metric too, so the alarm's own evaluation keeps it in ALARM (a bare
    # SetAlarmState lasts only until the next evaluation, which could come first).
    now = datetime.datetime.now(datetime.timezone.utc)
    cw.put_metric_data(Namespace="E2E/guard", MetricData=[
        {"MetricName": "5xx", "Value": 5.0, "Timestamp": now - datetime.timedelta(seconds=s)} for s in range(0, 150, 30)])
    cw.set_alarm_state(AlarmName="guard-5xx", StateValue="ALARM", StateReason="errors after the release")
    deadline = time.time() + 30
    while time.time() < deadline:
        s = ecs.describe_services(cluster="guarded", services=["api"])["services"][0]
        failed = [d for d in s["deployments"] if d["rolloutState"] == "FAILED"]
        if failed:
            break
        time.sleep(0.5)
    assert failed and "alarm(s) detected: guard-5xx" in failed[0]["rolloutStateReason"], s["deployments"]
    primary = [d for d in s["deployments"] if d["status"] == "PRIMARY"][0]
    assert primary["taskDefinition"].endswith("guarded:1"), "rolled back to the last completed revision"
    ecs.delete_service(cluster="guarded", service="api", force=True)


def test_load_balancers_publish_application_elb_metrics(gantry, ecs, cw):
    """Requests through a load balancer show up as AWS/ApplicationELB metrics (per load
    balancer and per target group) and as Prometheus series."""
    import urllib.request

    import requests
    from test_elbv2 import start_tasks, target_group, wait_health
    elb = gantry.client("elbv2")
    _, ips = start_tasks(ecs, "metrics", 2)
    tg = target_group(elb, "cw-metrics", HealthCheckPath="/health")
    elb.register_targets(TargetGroupArn=tg, Targets=[{"Id": ip} for ip in ips])
    lb = elb.create_load_balancer(Name="cw-metrics", Subnets=subnets())["LoadBalancers"][0]
    elb.create_listener(LoadBalancerArn=lb["LoadBalancerArn"], Protocol="HTTP", Port=80,
                        DefaultActions=[{"Type": "forward", "TargetGroupArn": tg}])
    wait_health(elb, tg, "healthy", 2)
    started = datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0)
    for _ in range(40):
        assert requests.get(f"http://{lb['DNSName']}/", timeout=5).status_code == 200
    for _ in range(5):
        assert requests.get(f"http://{lb['DNSName']}/missing", timeout=5).status_code == 404
    lb_dim = [{"Name": "LoadBalancer", "Value": lb["LoadBalancerArn"].split(":loadbalancer/")[1]}]
    tg_dim = [{"Name": "TargetGroup", "Value": tg.rsplit(":", 1)[1]}]

    def total(name, dims, stat="Sum"):
        out = cw.get_metric_statistics(Namespace="AWS/ApplicationELB", MetricName=name, Dimensions=dims,
                                       StartTime=started - datetime.timedelta(minutes=1),
                                       EndTime=started + datetime.timedelta(minutes=5), Period=300, Statistics=[stat])
        return sum(d[stat] for d in out["Datapoints"])
    deadline = time.time() + 30
    while total("RequestCount", lb_dim) < 45 and time.time() < deadline:
        time.sleep(1)
    assert total("RequestCount", lb_dim) == 45
    assert total("HTTPCode_Target_2XX_Count", lb_dim) == 40
    assert total("HTTPCode_Target_4XX_Count", lb_dim) == 5
    assert total("RequestCountPerTarget", tg_dim) == 22.5
    assert total("HealthyHostCount", [lb_dim[0], tg_dim[0]], "Maximum") == 2
    p = cw.get_metric_statistics(Namespace="AWS/ApplicationELB", MetricName="TargetResponseTime", Dimensions=lb_dim,
                                 StartTime=started - datetime.timedelta(minutes=1),
                                 EndTime=started + datetime.timedelta(minutes=5), Period=300,
                                 ExtendedStatistics=["p95"])["Datapoints"]
    assert 0 < p[0]["ExtendedStatistics"]["p95"] < 1
    with urllib.request.urlopen(f"{gantry.endpoint}/metrics", timeout=5) as r:
        text = r.read().decode()
    name = lb_dim[0]["Value"]
    assert f'gantry_lb_requests_total{{load_balancer="{name}",source="target",code="2xx"}} 40' in text
    assert f'gantry_lb_target_response_seconds_count{{load_balancer="{name}"}} 45' in text
