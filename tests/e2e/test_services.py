"""Services: steady state, replacement of dead and unhealthy tasks, rolling deployments within
min/max percent, the circuit breaker with rollback, scale to zero and delete."""
import glob
import json
import os
import signal
import time

from conftest import IMAGE, NETWORK as NET, register

LOOP = "trap 'exit 0' TERM; while :; do sleep 0.1; done"


def stable(ecs, name, cluster="default"):
    ecs.get_waiter("services_stable").wait(cluster=cluster, services=[name], WaiterConfig={"Delay": 1, "MaxAttempts": 120})
    return ecs.describe_services(cluster=cluster, services=[name])["services"][0]


def service_tasks(ecs, name, status="RUNNING"):
    arns = ecs.list_tasks(cluster="default", desiredStatus=status)["taskArns"]
    if not arns:
        return []
    return [t for t in ecs.describe_tasks(cluster="default", tasks=arns[:100])["tasks"] if t.get("group") == f"service:{name}"]


def test_service_reaches_steady_state_and_replaces_a_killed_task(gantry, ecs):
    register(ecs, "svc-basic", [{"name": "app", "command": ["sh", "-c", LOOP], "stopTimeout": 2}])
    s = ecs.create_service(serviceName="basic", taskDefinition="svc-basic", desiredCount=3, networkConfiguration=NET)["service"]
    assert s["status"] == "ACTIVE" and s["deployments"][0]["id"].startswith("ecs-svc/")
    s = stable(ecs, "basic")
    assert (s["runningCount"], s["desiredCount"], s["deployments"][0]["rolloutState"]) == (3, 3, "COMPLETED")
    messages = [e["message"] for e in s["events"]]
    assert messages[0] == "(service basic) has reached a steady state."
    assert any(m.startswith("(service basic) has started 3 tasks: (task ") for m in messages)
    tasks = service_tasks(ecs, "basic")
    assert len(tasks) == 3 and all(t["startedBy"] == s["deployments"][0]["id"] for t in tasks)
    # Kill one task's process from outside: the service replaces it.
    victim = tasks[0]["taskArn"].rsplit("/", 1)[1]
    started = glob.glob(f"{gantry.dir}/data/tasks/{victim}/*/started.json")[0]
    os.kill(json.load(open(started))["container_pid"], signal.SIGKILL)
    deadline = time.time() + 60
    while True:
        s = ecs.describe_services(cluster="default", services=["basic"])["services"][0]
        live = [t for t in service_tasks(ecs, "basic") if t["lastStatus"] == "RUNNING"]
        if len(live) == 3 and all(t["taskArn"].rsplit("/", 1)[1] != victim for t in live):
            break
        assert time.time() < deadline, s["events"][:5]
        time.sleep(0.3)
    dead = ecs.describe_tasks(cluster="default", tasks=[victim])["tasks"][0]
    assert dead["lastStatus"] == "STOPPED" and dead["containers"][0]["exitCode"] == 137
    ecs.update_service(service="basic", desiredCount=0)
    ecs.delete_service(service="basic")


def test_rolling_update_never_drops_below_minimum_nor_exceeds_maximum(ecs):
    for v in (1, 2):
        register(ecs, "svc-roll", [{"name": "app", "command": ["sh", "-c", f"echo v{v}; {LOOP}"], "stopTimeout": 2}])
    ecs.create_service(serviceName="roll", taskDefinition="svc-roll:1", desiredCount=3, networkConfiguration=NET,
                       deploymentConfiguration={"minimumHealthyPercent": 100, "maximumPercent": 200})
    stable(ecs, "roll")
    ecs.update_service(service="roll", taskDefinition="svc-roll:2")
    samples = []
    deadline = time.time() + 90
    while True:
        s = ecs.describe_services(cluster="default", services=["roll"])["services"][0]
        tasks = service_tasks(ecs, "roll")
        running = [t for t in tasks if t["lastStatus"] == "RUNNING"]
        live = [t for t in tasks if t["lastStatus"] != "STOPPED"]
        samples.append((len(running), len(live)))
        if len(s["deployments"]) == 1 and s["deployments"][0]["rolloutState"] == "COMPLETED" and s["taskDefinition"].endswith(":2") \
                and s["runningCount"] == 3:
            break
        assert time.time() < deadline, s
        time.sleep(0.05)
    assert min(r for r, _ in samples) >= 3, f"dropped below 3 running: {samples}"
    assert max(l for _, l in samples) <= 6, f"exceeded 200%: {samples}"
    tasks = service_tasks(ecs, "roll")
    assert len(tasks) == 3 and all(t["taskDefinitionArn"].endswith("svc-roll:2") for t in tasks)
    msgs = [e["message"] for e in s["events"]]
    assert any("deployment completed." in m for m in msgs)
    ecs.delete_service(service="roll", force=True)


def test_failing_health_check_gets_the_task_replaced(ecs):
    register(ecs, "svc-sick", [{"name": "app", "stopTimeout": 2,
                                "command": ["sh", "-c", f"touch /tmp/ok; (sleep 7; rm /tmp/ok) & {LOOP}"],
                                "healthCheck": {"command": ["CMD-SHELL", "test -f /tmp/ok"], "interval": 5, "timeout": 2, "retries": 1}}])
    ecs.create_service(serviceName="sick", taskDefinition="svc-sick", desiredCount=1, networkConfiguration=NET)
    deadline = time.time() + 90
    while True:
        stopped = service_tasks(ecs, "sick", status="STOPPED")
        if any(t.get("stoppedReason") == "Task failed container health checks" for t in stopped):
            break
        assert time.time() < deadline, ecs.describe_services(cluster="default", services=["sick"])["services"][0]["events"][:5]
        time.sleep(0.5)
    t = [t for t in stopped if t.get("stoppedReason") == "Task failed container health checks"][0]
    assert t["stopCode"] == "ServiceSchedulerInitiated"
    deadline = time.time() + 30
    while not [t for t in service_tasks(ecs, "sick") if t["lastStatus"] == "RUNNING"]:
        assert time.time() < deadline
        time.sleep(0.3)
    ecs.delete_service(service="sick", force=True)


def test_circuit_breaker_rolls_back_a_bad_deployment(ecs):
    register(ecs, "svc-cb", [{"name": "app", "command": ["sh", "-c", LOOP], "stopTimeout": 2}])
    ecs.register_task_definition(family="svc-cb", networkMode="awsvpc", requiresCompatibilities=["FARGATE"], cpu="256", memory="512",
                                 containerDefinitions=[{"name": "app", "image": "127.0.0.1:9/broken/image:1"}])
    breaker = {"enable": True, "rollback": True, "thresholdConfiguration": {"type": "COUNT", "value": 3}}
    ecs.create_service(serviceName="cb", taskDefinition="svc-cb:1", desiredCount=2, networkConfiguration=NET,
                       deploymentConfiguration={"deploymentCircuitBreaker": breaker, "minimumHealthyPercent": 100, "maximumPercent": 200})
    good = stable(ecs, "cb")["deployments"][0]["id"]
    bad = ecs.update_service(service="cb", taskDefinition="svc-cb:2")["service"]["deployments"][0]["id"]
    deadline = time.time() + 120
    while True:
        s = ecs.describe_services(cluster="default", services=["cb"])["services"][0]
        msgs = [e["message"] for e in s["events"]]
        done = any("rolling back" in m for m in msgs) and len(s["deployments"]) == 1 and s["deployments"][0]["rolloutState"] == "COMPLETED"
        if done:
            break
        assert time.time() < deadline, (s["deployments"], msgs[:6])
        time.sleep(0.5)
    assert f"(service cb) deployment {bad} deployment failed: tasks failed to start." in msgs
    assert f"(service cb) rolling back to deployment {good}." in msgs
    assert s["taskDefinition"].endswith("svc-cb:1") and s["runningCount"] == 2
    tasks = service_tasks(ecs, "cb")
    assert all(t["taskDefinitionArn"].endswith("svc-cb:1") for t in tasks)
    ecs.delete_service(service="cb", force=True)


def test_scale_to_zero_delete_and_wait_inactive(ecs):
    register(ecs, "svc-del", [{"name": "app", "command": ["sh", "-c", LOOP], "stopTimeout": 2}])
    ecs.create_service(serviceName="del", taskDefinition="svc-del", desiredCount=2, networkConfiguration=NET)
    stable(ecs, "del")
    import pytest
    from botocore.exceptions import ClientError
    with pytest.raises(ClientError) as e:
        ecs.delete_service(service="del")
    assert e.value.response["Error"]["Code"] == "InvalidParameterException"
    ecs.update_service(service="del", desiredCount=0)
    s = stable(ecs, "del")
    assert s["runningCount"] == 0
    d = ecs.delete_service(service="del")["service"]
    assert d["status"] == "DRAINING"
    ecs.get_waiter("services_inactive").wait(cluster="default", services=["del"], WaiterConfig={"Delay": 1, "MaxAttempts": 60})
    assert "del" not in " ".join(ecs.list_services(cluster="default")["serviceArns"])
    with pytest.raises(ClientError) as e:
        ecs.update_service(service="del", desiredCount=1)
    assert e.value.response["Error"]["Code"] == "ServiceNotActiveException"
    with pytest.raises(ClientError) as e:
        ecs.update_service(service="nosuch", desiredCount=1)
    assert e.value.response["Error"]["Code"] == "ServiceNotFoundException"
    d = ecs.describe_services(cluster="default", services=["nosuch"])
    assert d["failures"][0]["reason"] == "MISSING"


def test_scale_in_honours_task_protection(ecs):
    register(ecs, "svc-prot", [{"name": "app", "command": ["sh", "-c", LOOP], "stopTimeout": 2}])
    ecs.create_service(serviceName="prot", taskDefinition="svc-prot", desiredCount=3, networkConfiguration=NET)
    stable(ecs, "prot")
    tasks = service_tasks(ecs, "prot")
    keep = tasks[0]["taskArn"]
    r = ecs.update_task_protection(cluster="default", tasks=[keep], protectionEnabled=True, expiresInMinutes=10)
    assert r["protectedTasks"][0]["protectionEnabled"] is True and "expirationDate" in r["protectedTasks"][0]
    assert ecs.get_task_protection(cluster="default", tasks=[keep])["protectedTasks"][0]["protectionEnabled"] is True
    ecs.update_service(service="prot", desiredCount=1)
    s = stable(ecs, "prot")
    live = service_tasks(ecs, "prot")
    assert [t["taskArn"] for t in live] == [keep], "the protected task survives scale-in"
    ecs.update_task_protection(cluster="default", tasks=[keep], protectionEnabled=False)
    assert ecs.get_task_protection(cluster="default", tasks=[keep])["protectedTasks"][0]["protectionEnabled"] is False
    import pytest
    from botocore.exceptions import ClientError
    with pytest.raises(ClientError) as e:
        ecs.update_task_protection(cluster="default", tasks=[keep], protectionEnabled=True, expiresInMinutes=3000)
    assert e.value.response["Error"]["Code"] == "InvalidParameterException"
    with pytest.raises(ClientError) as e:
        ecs.delete_cluster(cluster="default")
    assert e.value.response["Error"]["Code"] == "ClusterContainsServicesException"
    ecs.delete_service(service="prot", force=True)


def test_crash_looping_tasks_back_off_and_the_service_says_so(ecs):
    register(ecs, "svc-crash", [{"name": "app", "command": ["sh", "-c", "exit 1"]}])
    ecs.create_service(serviceName="crash", taskDefinition="svc-crash", desiredCount=1, networkConfiguration=NET,
                       deploymentConfiguration={"deploymentCircuitBreaker": {"enable": False, "rollback": False}})
    deadline = time.time() + 60
    while True:
        s = ecs.describe_services(cluster="default", services=["crash"])["services"][0]
        msgs = [e["message"] for e in s["events"]]
        if any("is unable to consistently start tasks successfully" in m for m in msgs):
            break
        assert time.time() < deadline, msgs[:6]
        time.sleep(0.5)
    # With backoff, launches slow down: far fewer than one every reconcile pass.
    before = len(service_tasks(ecs, "crash", status="STOPPED"))
    time.sleep(8)
    after = len(service_tasks(ecs, "crash", status="STOPPED"))
    assert after - before <= 6, f"{after - before} launches in 8 s: no backoff"
    assert s["deployments"][0]["failedTasks"] >= 3
    ecs.delete_service(service="crash", force=True)


def test_deployment_while_tasks_are_starting_keeps_capacity(ecs):
    """The reported defect: a new revision deployed while the service's tasks are still starting
    (health UNKNOWN) must not stop them before new tasks have passed their checks."""
    check = {"command": ["CMD-SHELL", "test -f /tmp/ready"], "interval": 5, "timeout": 2, "retries": 2}
    for v in (1, 2):
        register(ecs, "svc-warm", [{"name": "app", "stopTimeout": 2, "healthCheck": check,
                                    "command": ["sh", "-c", f"echo v{v}; (sleep 2; touch /tmp/ready) & {LOOP}"]}])
    ecs.create_service(serviceName="warm", taskDefinition="svc-warm:1", desiredCount=3, networkConfiguration=NET,
                       deploymentConfiguration={"minimumHealthyPercent": 100, "maximumPercent": 200})
    deadline = time.time() + 30
    while len([t for t in service_tasks(ecs, "warm") if t["lastStatus"] == "RUNNING"]) < 3:
        assert time.time() < deadline
        time.sleep(0.1)
    first = service_tasks(ecs, "warm")
    assert all(t["healthStatus"] == "UNKNOWN" for t in first), "the checks should not have run yet"
    ecs.stop_task(cluster="default", task=first[0]["taskArn"], reason="replace me")
    deadline = time.time() + 10
    while len(service_tasks(ecs, "warm")) < 3:
        assert time.time() < deadline, "the stopped task was not replaced"
        time.sleep(0.1)
    old = service_tasks(ecs, "warm")
    assert any(t["healthStatus"] == "UNKNOWN" for t in old)
    ecs.update_service(service="warm", taskDefinition="svc-warm:2")
    samples = []
    deadline = time.time() + 90
    while True:
        s = ecs.describe_services(cluster="default", services=["warm"])["services"][0]
        tasks = service_tasks(ecs, "warm")
        old_wanted = [t for t in tasks if t["taskDefinitionArn"].endswith("svc-warm:1")]
        new_healthy = [t for t in tasks if t["taskDefinitionArn"].endswith("svc-warm:2") and t["healthStatus"] == "HEALTHY"]
        samples.append((len(old_wanted), len(new_healthy)))
        if len(s["deployments"]) == 1 and s["deployments"][0]["rolloutState"] == "COMPLETED" and len(new_healthy) == 3:
            break
        assert time.time() < deadline, (s["events"][:5], samples[-5:])
        time.sleep(0.1)
    assert min(o + n for o, n in samples) >= 3, f"capacity given up before it was replaced: {samples}"
    # The counts DescribeServices gives match what ListTasks shows once settled.
    s = stable(ecs, "warm")
    assert (s["runningCount"], s["pendingCount"]) == (len(service_tasks(ecs, "warm")), 0)
    ecs.delete_service(service="warm", force=True)
