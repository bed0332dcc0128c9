"""Chaos during a rolling deployment: task processes killed and the server killed with -9 and
restarted, repeatedly. The service must converge to the new revision at its desired count,
and no sample may show more tasks than maximumPercent allows."""
import glob
import json
import os
import random
import signal
import time

from conftest import NETWORK as NET, Gantry, register

LOOP = "trap 'exit 0' TERM; while :; do sleep 0.1; done"
DESIRED, MAX_PERCENT = 4, 200


def live_tasks(ecs):
    arns = []
    for status in ("RUNNING", "STOPPED"):
        arns += ecs.list_tasks(cluster="default", desiredStatus=status, maxResults=100)["taskArns"]
    out = []
    for i in range(0, len(arns), 100):
        out += ecs.describe_tasks(cluster="default", tasks=arns[i:i + 100])["tasks"]
    return [t for t in out if t.get("group") == "service:chaos" and t["lastStatus"] != "STOPPED"]


def test_rolling_deployment_survives_kills_and_server_crashes():
    g = Gantry(instance=3)
    random.seed(int(os.environ.get("GANTRY_CHAOS_SEED", "7")))
    try:
        g.start()
        ecs = g.client("ecs")
        for v in (1, 2):
            register(ecs, "chaos", [{"name": "app", "command": ["sh", "-c", f"echo v{v}; {LOOP}"], "stopTimeout": 2}])
        ecs.create_service(serviceName="chaos", taskDefinition="chaos:1", desiredCount=DESIRED, networkConfiguration=NET,
                           deploymentConfiguration={"minimumHealthyPercent": 100, "maximumPercent": MAX_PERCENT})
        ecs.get_waiter("services_stable").wait(cluster="default", services=["chaos"], WaiterConfig={"Delay": 1, "MaxAttempts": 60})
        ecs.update_service(service="chaos", taskDefinition="chaos:2")
        samples, crashes, kills = [], 0, 0
        end = time.time() + 20
        while time.time() < end:
            samples.append(len(live_tasks(ecs)))
            if random.random() < 0.35:
                g.kill9()
                crashes += 1
                time.sleep(random.uniform(0.2, 1.0))
                g.start()
                ecs = g.client("ecs")
            else:
                pids = [json.load(open(f))["container_pid"] for f in glob.glob(f"{g.dir}/data/tasks/*/*/started.json")]
                if pids:
                    try:
                        os.kill(random.choice(pids), signal.SIGKILL)
                        kills += 1
                    except ProcessLookupError:
                        pass
            time.sleep(random.uniform(0.3, 1.0))
        assert crashes >= 2 and kills >= 2, (crashes, kills)
        deadline = time.time() + 180
        while True:
            s = ecs.describe_services(cluster="default", services=["chaos"])["services"][0]
            live = live_tasks(ecs)
            samples.append(len(live))
            done = (len(s["deployments"]) == 1 and s["taskDefinition"].endswith("chaos:2") and s["runningCount"] == DESIRED
                    and len(live) == DESIRED and all(t["taskDefinitionArn"].endswith("chaos:2") and t["lastStatus"] == "RUNNING" for t in live))
            if done:
                break
            assert time.time() < deadline, (s["deployments"], [e["message"] for e in s["events"][:8]])
            time.sleep(0.5)
        assert max(samples) <= DESIRED * MAX_PERCENT // 100, f"exceeded maximumPercent: {samples}"
        ecs.delete_service(service="chaos", force=True)
        ecs.get_waiter("services_inactive").wait(cluster="default", services=["chaos"], WaiterConfig={"Delay": 1, "MaxAttempts": 60})
    finally:
        g.cleanup()
