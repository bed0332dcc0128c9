"""Running tasks: lifecycle, exit codes, logs, stop, OOM, pull failures, sidecars."""
import time

from conftest import NETWORK, REGION, awslogs, register, run, wait_stopped


def test_task_runs_to_completion_with_logs_via_cli(gantry, ecs):
    register(ecs, "cli-hello", [{"name": "app", "command": ["sh", "-c", "echo hello from gantry; echo to stderr >&2; sleep 2; exit 3"],
                                 "logConfiguration": awslogs("/e2e/cli-hello")}])
    out, _ = gantry.aws("ecs", "run-task", "--cluster", "default", "--task-definition", "cli-hello", "--launch-type", "FARGATE",
                        "--network-configuration", f"awsvpcConfiguration={{subnets=[{NETWORK['awsvpcConfiguration']['subnets'][0]}]}}")
    arn = out["tasks"][0]["taskArn"]
    assert out["tasks"][0]["lastStatus"] == "PROVISIONING" and out["tasks"][0]["desiredStatus"] == "RUNNING"
    gantry.aws("ecs", "wait", "tasks-running", "--cluster", "default", "--tasks", arn)
    gantry.aws("ecs", "wait", "tasks-stopped", "--cluster", "default", "--tasks", arn)
    out, _ = gantry.aws("ecs", "describe-tasks", "--cluster", "default", "--tasks", arn)
    t = out["tasks"][0]
    assert (t["lastStatus"], t["stopCode"], t["stoppedReason"]) == ("STOPPED", "EssentialContainerExited", "Essential container in task exited")
    assert t["containers"][0]["exitCode"] == 3
    tid = arn.rsplit("/", 1)[1]
    out, _ = gantry.aws("logs", "get-log-events", "--log-group-name", "/e2e/cli-hello",
                        "--log-stream-name", f"ecs/app/{tid}", "--start-from-head")
    # stdout and stderr are separate pipes: their relative order is not defined (as in Docker).
    assert sorted(e["message"] for e in out["events"]) == ["hello from gantry", "to stderr"]


def test_lifecycle_fields_and_timestamps(ecs):
    td = register(ecs, "life-fields", [{"name": "app", "command": ["sh", "-c", "sleep 1"]}])
    task = run(ecs, "default", "life-fields", startedBy="e2e", tags=[{"key": "k", "value": "v"}])[0]
    assert task["taskDefinitionArn"] == td["taskDefinitionArn"]
    assert task["group"] == "family:life-fields" and task["startedBy"] == "e2e"
    t = wait_stopped(ecs, "default", [task["taskArn"]])[0]
    order = ["createdAt", "pullStartedAt", "pullStoppedAt", "connectivityAt", "startedAt", "stoppingAt", "executionStoppedAt", "stoppedAt"]
    stamps = [t[k] for k in order]
    assert stamps == sorted(stamps), dict(zip(order, stamps))
    assert t["version"] > task["version"]
    att = t["attachments"][0]
    details = {d["name"]: d["value"] for d in att["details"]}
    assert att["type"] == "ElasticNetworkInterface" and details["privateIPv4Address"].startswith("10.217.0.")
    c = t["containers"][0]
    assert c["networkInterfaces"][0]["privateIpv4Address"] == details["privateIPv4Address"]
    assert c["imageDigest"].startswith("sha256:") and c["runtimeId"] and c["exitCode"] == 0
    tags = ecs.describe_tasks(cluster="default", tasks=[task["taskArn"]], include=["TAGS"])["tasks"][0]["tags"]
    assert tags == [{"key": "k", "value": "v"}]


def test_stop_task_with_reason(ecs):
    register(ecs, "stopper", [{"name": "app", "command": ["sh", "-c", "trap 'exit 0' TERM; while :; do sleep 0.1; done"], "stopTimeout": 5}])
    task = run(ecs, "default", "stopper")[0]
    ecs.get_waiter("tasks_running").wait(cluster="default", tasks=[task["taskArn"]], WaiterConfig={"Delay": 1, "MaxAttempts": 60})
    running = ecs.list_tasks(cluster="default", desiredStatus="RUNNING")["taskArns"]
    assert task["taskArn"] in running
    time.sleep(0.5)
    stopped = ecs.stop_task(cluster="default", task=task["taskArn"], reason="maintenance window")["task"]
    assert stopped["desiredStatus"] == "STOPPED"
    t = wait_stopped(ecs, "default", [task["taskArn"]])[0]
    assert (t["stopCode"], t["stoppedReason"]) == ("UserInitiated", "maintenance window")
    assert t["containers"][0]["exitCode"] == 0
    assert task["taskArn"] in ecs.list_tasks(cluster="default", desiredStatus="STOPPED")["taskArns"]
    # Default reason.
    task = run(ecs, "default", "stopper")[0]
    ecs.stop_task(cluster="default", task=task["taskArn"])
    t = wait_stopped(ecs, "default", [task["taskArn"]])[0]
    assert t["stoppedReason"] == "Task stopped by user"


def test_oom_is_reported(ecs):
    register(ecs, "oom", [{"name": "hog", "memory": 16, "command": ["sh", "-c", "x=$(head -c 100000000 /dev/zero | tr '\\0' a)"]}])
    task = run(ecs, "default", "oom")[0]
    t = wait_stopped(ecs, "default", [task["taskArn"]])[0]
    c = t["containers"][0]
    assert c["exitCode"] == 137 and c["reason"] == "OutOfMemoryError: Container killed due to memory usage"
    assert t["stopCode"] == "EssentialContainerExited"


def test_image_that_cannot_be_pulled_fails_to_start(ecs):
    register(ecs, "nopull", [{"name": "app", "image": "127.0.0.1:9/nope/missing:1"}])
    task = run(ecs, "default", "nopull")[0]
    t = wait_stopped(ecs, "default", [task["taskArn"]])[0]
    assert t["stopCode"] == "TaskFailedToStart"
    assert t["stoppedReason"].startswith("CannotPullContainerError:"), t["stoppedReason"]


def test_sidecar_reaches_app_on_localhost(ecs, logs):
    register(ecs, "sidecar", [
        {"name": "web", "essential": False, "command": ["sh", "-c", "trap 'exit 0' TERM; httpd -f -p 8080 -h /www & wait"]},
        {"name": "probe", "command": ["sh", "-c", "for i in $(seq 1 50); do wget -qO- http://localhost:8080/index.html && exit 0; sleep 0.1; done; exit 1"],
         "dependsOn": [{"containerName": "web", "condition": "START"}], "logConfiguration": awslogs("/e2e/sidecar")},
    ])
    task = run(ecs, "default", "sidecar")[0]
    t = wait_stopped(ecs, "default", [task["taskArn"]])[0]
    codes = {c["name"]: c.get("exitCode") for c in t["containers"]}
    assert codes["probe"] == 0, t
    tid = task["taskArn"].rsplit("/", 1)[1]
    ev = logs.get_log_events(logGroupName="/e2e/sidecar", logStreamName=f"ecs/probe/{tid}", startFromHead=True)["events"]
    assert [e["message"] for e in ev] == ["hello from gantry httpd"]


def test_overrides_and_list_tasks_pagination(ecs):
    register(ecs, "many", [{"name": "app", "command": ["sh", "-c", "trap 'exit 0' TERM; while :; do sleep 0.1; done"], "stopTimeout": 2}])
    tasks = run(ecs, "default", "many", count=3, startedBy="pager")
    arns = [t["taskArn"] for t in tasks]
    pages = list(ecs.get_paginator("list_tasks").paginate(cluster="default", startedBy="pager", PaginationConfig={"PageSize": 1}))
    listed = [a for p in pages for a in p["taskArns"]]
    assert sorted(listed) == sorted(arns) and len(pages) >= 3
    for a in arns:
        ecs.stop_task(cluster="default", task=a)
    wait_stopped(ecs, "default", arns)
    register(ecs, "ovr", [{"name": "app", "command": ["sh", "-c", "exit 1"], "environment": [{"name": "CODE", "value": "1"}]}])
    task = run(ecs, "default", "ovr", overrides={"containerOverrides": [{"name": "app", "command": ["sh", "-c", "exit $CODE"],
                                                                         "environment": [{"name": "CODE", "value": "9"}]}]})[0]
    t = wait_stopped(ecs, "default", [task["taskArn"]])[0]
    assert t["containers"][0]["exitCode"] == 9


def test_logs_api(logs):
    logs.create_log_group(logGroupName="/e2e/api")
    logs.create_log_stream(logGroupName="/e2e/api", logStreamName="s1")
    now = int(time.time() * 1000)
    logs.put_log_events(logGroupName="/e2e/api", logStreamName="s1",
                        logEvents=[{"timestamp": now + i, "message": m} for i, m in enumerate(["ERROR disk", "INFO ok", "ERROR cpu"])])
    got = logs.filter_log_events(logGroupName="/e2e/api", filterPattern="ERROR")["events"]
    assert [e["message"] for e in got] == ["ERROR disk", "ERROR cpu"]
    page1 = logs.get_log_events(logGroupName="/e2e/api", logStreamName="s1", startFromHead=True, limit=2)
    page2 = logs.get_log_events(logGroupName="/e2e/api", logStreamName="s1", startFromHead=True, nextToken=page1["nextForwardToken"])
    assert [e["message"] for e in page1["events"] + page2["events"]] == ["ERROR disk", "INFO ok", "ERROR cpu"]
    end = logs.get_log_events(logGroupName="/e2e/api", logStreamName="s1", startFromHead=True, nextToken=page2["nextForwardToken"])
    assert end["events"] == [] and end["nextForwardToken"] == page2["nextForwardToken"]
    logs.put_retention_policy(logGroupName="/e2e/api", retentionInDays=7)
    g = logs.describe_log_groups(logGroupNamePrefix="/e2e/api")["logGroups"][0]
    assert g["retentionInDays"] == 7
    s = logs.describe_log_streams(logGroupName="/e2e/api")["logStreams"][0]
    assert s["logStreamName"] == "s1" and s["lastEventTimestamp"] == now + 2
    import pytest
    from botocore.exceptions import ClientError
    with pytest.raises(ClientError) as e:
        logs.create_log_group(logGroupName="/e2e/api")
    assert e.value.response["Error"]["Code"] == "ResourceAlreadyExistsException"
    with pytest.raises(ClientError) as e:
        logs.put_log_events(logGroupName="/e2e/api", logStreamName="s1",
                            logEvents=[{"timestamp": now + 5, "message": "b"}, {"timestamp": now, "message": "a"}])
    assert e.value.response["Error"]["Code"] == "InvalidParameterException"
    with pytest.raises(ClientError) as e:
        logs.get_log_events(logGroupName="/e2e/none", logStreamName="s1")
    assert e.value.response["Error"]["Code"] == "ResourceNotFoundException"


def test_gantry_cli_run_ps_logs_stop(gantry):
    import subprocess
    from conftest import GANTRY, IMAGE, KEY, SECRET
    env = dict(gantry.env, GANTRY_ENDPOINT=gantry.endpoint, AWS_ACCESS_KEY_ID=KEY, AWS_SECRET_ACCESS_KEY=SECRET,
               AWS_CONFIG_FILE="/dev/null", AWS_SHARED_CREDENTIALS_FILE="/dev/null")

    def g(*args):
        return subprocess.run([GANTRY, *args], capture_output=True, text=True, env=env, timeout=120)

    r = g("run", IMAGE, "--", "sh", "-c", "echo one; echo two; exit 4")
    assert r.returncode == 4, r.stderr
    assert r.stdout == "one\ntwo\n"
    again = g("run", IMAGE, "--", "sh", "-c", "echo one; echo two; exit 4")
    assert again.returncode == 4
    fams = gantry.client("ecs").list_task_definitions(familyPrefix="gantry-run-busybox")["taskDefinitionArns"]
    assert len(fams) == 1, "an identical run reuses the task definition"
    r = g("run", "-d", IMAGE, "--", "sh", "-c", "trap 'exit 0' TERM; echo started; while :; do sleep 0.1; done")
    assert r.returncode == 0, r.stderr
    tid = r.stdout.strip()
    ecs = gantry.client("ecs")
    ecs.get_waiter("tasks_running").wait(cluster="default", tasks=[tid], WaiterConfig={"Delay": 1, "MaxAttempts": 60})
    ps = g("ps")
    assert tid in ps.stdout and "RUNNING" in ps.stdout, ps.stdout
    import time
    deadline = time.time() + 10
    while "started" not in g("logs", tid).stdout:
        assert time.time() < deadline
        time.sleep(0.2)
    # A closed pipe ends the CLI quietly (SIGPIPE), never with a panic.
    ticker = g("run", "-d", IMAGE, "--", "sh", "-c", "trap 'exit 0' TERM; while :; do echo tick; sleep 0.1; done").stdout.strip()
    p = subprocess.run(f"set -o pipefail; {GANTRY} logs -f {ticker} | head -n 3", shell=True, executable="/bin/bash",
                       capture_output=True, text=True, env=env, timeout=60)
    assert p.stdout == "tick\ntick\ntick\n" and p.returncode == 141, (p.returncode, p.stderr)
    assert "panicked" not in p.stderr and "Broken pipe" not in p.stderr, p.stderr
    assert g("stop", ticker).returncode == 0
    assert g("stop", tid).returncode == 0
    r = g("logs", "-f", tid)
    assert r.returncode == 0 and "started" in r.stdout
    ps = g("ps", "-a")
    assert tid in ps.stdout and "STOPPED" in ps.stdout
    bad = g("run", "127.0.0.1:9/missing/image:1", "--", "true")
    assert bad.returncode == 125 and "CannotPullContainerError" in bad.stderr


def test_depends_on_healthy_and_health_rollup(ecs):
    import time as _t
    register(ecs, "healthy-dep", [
        {"name": "db", "command": ["sh", "-c", "trap 'exit 0' TERM; sleep 1; touch /tmp/ready; while :; do sleep 0.1; done"],
         "healthCheck": {"command": ["CMD-SHELL", "test -f /tmp/ready"], "interval": 5, "timeout": 2, "retries": 1}, "stopTimeout": 2},
        {"name": "app", "essential": False, "command": ["sh", "-c", "echo app started"],
         "dependsOn": [{"containerName": "db", "condition": "HEALTHY"}], "logConfiguration": awslogs("/e2e/healthy")},
    ])
    task = run(ecs, "default", "healthy-dep")[0]
    deadline = _t.time() + 60
    while True:
        t = ecs.describe_tasks(cluster="default", tasks=[task["taskArn"]])["tasks"][0]
        app = [c for c in t["containers"] if c["name"] == "app"][0]
        if app.get("exitCode") is not None:
            break
        assert _t.time() < deadline, t
        _t.sleep(0.5)
    db = [c for c in t["containers"] if c["name"] == "db"][0]
    assert db["healthStatus"] == "HEALTHY" and t["healthStatus"] == "HEALTHY"
    assert app["exitCode"] == 0
    ecs.stop_task(cluster="default", task=task["taskArn"])
    wait_stopped(ecs, "default", [task["taskArn"]])

    register(ecs, "sick", [{"name": "app", "command": ["sh", "-c", "trap 'exit 0' TERM; while :; do sleep 0.1; done"],
                            "healthCheck": {"command": ["CMD", "false"], "interval": 5, "retries": 1}, "stopTimeout": 2}])
    task = run(ecs, "default", "sick")[0]
    deadline = _t.time() + 30
    while ecs.describe_tasks(cluster="default", tasks=[task["taskArn"]])["tasks"][0]["healthStatus"] != "UNHEALTHY":
        assert _t.time() < deadline
        _t.sleep(0.5)
    t = ecs.describe_tasks(cluster="default", tasks=[task["taskArn"]])["tasks"][0]
    assert t["lastStatus"] == "RUNNING" and t["containers"][0]["healthStatus"] == "UNHEALTHY"
    ecs.stop_task(cluster="default", task=task["taskArn"])
    wait_stopped(ecs, "default", [task["taskArn"]])


def test_task_metadata_endpoint_v4(ecs, logs):
    import json as _json
    import time as _t
    register(ecs, "meta-a", [{"name": "app", "stopTimeout": 2, "logConfiguration": awslogs("/e2e/meta"),
                              "command": ["sh", "-c", "echo $ECS_CONTAINER_METADATA_URI_V4; trap 'exit 0' TERM; while :; do sleep 0.1; done"]}])
    a = run(ecs, "default", "meta-a", tags=[{"key": "team", "value": "blue"}])[0]
    aid = a["taskArn"].rsplit("/", 1)[1]
    deadline = _t.time() + 30
    while True:
        try:
            ev = logs.get_log_events(logGroupName="/e2e/meta", logStreamName=f"ecs/app/{aid}", startFromHead=True)["events"]
        except Exception:
            ev = []
        if ev:
            break
        assert _t.time() < deadline
        _t.sleep(0.2)
    a_uri = ev[0]["message"]
    assert a_uri.startswith("http://169.254.170.2:51679/v4/")
    script = ("for p in '' /task /taskWithTags /stats /task/stats; do wget -qO- $ECS_CONTAINER_METADATA_URI_V4$p; echo; done; "
              "wget -qO- $OTHER/task >/dev/null 2>&1 && echo OTHER-READABLE || echo OTHER-REFUSED")
    register(ecs, "meta-b", [{"name": "probe", "logConfiguration": awslogs("/e2e/meta"), "command": ["sh", "-c", script],
                              "environment": [{"name": "OTHER", "value": a_uri}]}])
    b = run(ecs, "default", "meta-b", tags=[{"key": "team", "value": "green"}])[0]
    t = wait_stopped(ecs, "default", [b["taskArn"]])[0]
    assert t["containers"][0]["exitCode"] == 0, t
    bid = b["taskArn"].rsplit("/", 1)[1]
    lines = [e["message"] for e in logs.get_log_events(logGroupName="/e2e/meta", logStreamName=f"ecs/probe/{bid}", startFromHead=True)["events"]]
    container, task, tagged, stats, task_stats = (_json.loads(l) for l in lines[:5])
    assert container["Name"] == "probe" and container["Labels"]["com.amazonaws.ecs.task-arn"] == b["taskArn"]
    assert container["Networks"][0]["IPv4Addresses"][0] == t["containers"][0]["networkInterfaces"][0]["privateIpv4Address"]
    assert task["TaskARN"] == b["taskArn"] and task["Family"] == "meta-b" and task["LaunchType"] == "FARGATE"
    assert task["Limits"]["CPU"] == 0.25 and task["Limits"]["Memory"] == 512
    assert [c["Name"] for c in task["Containers"]] == ["probe"]
    assert tagged["TaskTags"] == {"team": "green"}
    assert stats["memory_stats"]["usage"] > 0 and stats["pids_stats"]["current"] >= 1
    assert stats["cpu_stats"]["cpu_usage"]["total_usage"] > 0
    assert "eth0" in stats["networks"] and stats["networks"]["eth0"]["tx_packets"] >= 0
    assert list(task_stats.keys()) == [container["DockerId"]]
    assert lines[5] == "OTHER-REFUSED", "one task cannot read another's metadata"
    ecs.stop_task(cluster="default", task=a["taskArn"])
    wait_stopped(ecs, "default", [a["taskArn"]])


def test_dependency_waits_are_bounded_and_stoppable(ecs):
    never_exits = {"name": "init", "essential": False, "command": ["sh", "-c", "trap 'exit 0' TERM; while :; do sleep 0.1; done"], "stopTimeout": 2}
    register(ecs, "dep-timeout", [never_exits, {"name": "app", "command": ["true"], "startTimeout": 2,
                                                "dependsOn": [{"containerName": "init", "condition": "COMPLETE"}]}])
    t = wait_stopped(ecs, "default", [run(ecs, "default", "dep-timeout")[0]["taskArn"]])[0]
    assert t["stopCode"] == "TaskFailedToStart" and "did not exit within 2s" in t["stoppedReason"], t["stoppedReason"]
    register(ecs, "dep-stop", [never_exits, {"name": "app", "command": ["true"], "startTimeout": 120,
                                             "dependsOn": [{"containerName": "init", "condition": "SUCCESS"}]}])
    arn = run(ecs, "default", "dep-stop")[0]["taskArn"]
    import time as _t
    _t.sleep(1.5)
    ecs.stop_task(cluster="default", task=arn, reason="changed my mind")
    t0 = _t.time()
    t = wait_stopped(ecs, "default", [arn])[0]
    assert _t.time() - t0 < 30
    assert (t["stopCode"], t["stoppedReason"]) == ("UserInitiated", "changed my mind")
