"""kill -9 of `gantry dev` while tasks run: no acknowledged write is lost, running tasks keep
running under their shims (same processes), and tasks that ended meanwhile get their real
exit codes after the restart."""
import glob
import json
import os
import time

import pytest

from conftest import Gantry, register, run, wait_stopped


@pytest.fixture
def fresh():
    g = Gantry(instance=1)
    g.start()
    yield g
    g.cleanup()


def container_pids(g, task_arn):
    tid = task_arn.rsplit("/", 1)[1]
    out = {}
    for f in glob.glob(f"{g.dir}/data/tasks/{tid}/*/started.json"):
        with open(f) as fh:
            s = json.load(fh)
        out[os.path.basename(os.path.dirname(f))] = (s["shim_pid"], s["container_pid"])
    return out


def test_kill9_restart_loses_nothing(fresh):
    g = fresh
    ecs = g.client("ecs")
    # Acknowledged writes survive: every cluster created before the kill is there after it.
    for i in range(30):
        ecs.create_cluster(clusterName=f"ack-{i}")
    register(ecs, "long", [{"name": "app", "command": ["sh", "-c", "trap 'exit 0' TERM; while :; do sleep 0.1; done"], "stopTimeout": 5}])
    register(ecs, "short", [{"name": "app", "command": ["sh", "-c", "sleep 3; exit 7"]}])
    long_arn = run(ecs, "default", "long")[0]["taskArn"]
    short_arn = run(ecs, "default", "short")[0]["taskArn"]
    ecs.get_waiter("tasks_running").wait(cluster="default", tasks=[long_arn, short_arn], WaiterConfig={"Delay": 1, "MaxAttempts": 60})
    before = container_pids(g, long_arn)
    assert before, "the long task has a running container"

    g.kill9()
    time.sleep(5)  # the short task exits while nobody watches
    g.start()
    ecs = g.client("ecs")

    arns = ecs.list_clusters(maxResults=100)["clusterArns"]
    assert all(any(a.endswith(f"cluster/ack-{i}") for a in arns) for i in range(30))
    short = wait_stopped(ecs, "default", [short_arn])[0]
    assert short["containers"][0]["exitCode"] == 7, short
    assert short["stopCode"] == "EssentialContainerExited"
    long = ecs.describe_tasks(cluster="default", tasks=[long_arn])["tasks"][0]
    assert long["lastStatus"] == "RUNNING"
    assert container_pids(g, long_arn) == before, "the same shim and container survived the restart"
    for _, (shim, ctr) in before.items():
        assert os.path.exists(f"/proc/{shim}") and os.path.exists(f"/proc/{ctr}")
    ecs.stop_task(cluster="default", task=long_arn, reason="after restart")
    long = wait_stopped(ecs, "default", [long_arn])[0]
    assert (long["containers"][0]["exitCode"], long["stoppedReason"]) == (0, "after restart")
