"""kill -9 of `gantry dev` while tasks run: no acknowledged write is lost, running tasks keep
running under their shims (same processes), and tasks that ended meanwhile get their real
exit codes after the restart."""
import glob
import json
import os
import subprocess
import time

import pytest

from conftest import Gantry, mounts_under, register, run, wait_for, wait_stopped


@pytest.fixture
def fresh():
    g = Gantry(instance=1)
    try:
        g.start()
        yield g
    finally:
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


def test_clean_exit_keeps_tasks_says_so_and_sweep_all_removes_everything(fresh):
    import subprocess
    g = fresh
    ecs = g.client("ecs")
    register(ecs, "keep", [{"name": "app", "command": ["sh", "-c", "trap 'exit 0' TERM; while :; do sleep 0.1; done"], "stopTimeout": 2}])
    arn = run(ecs, "default", "keep")[0]["taskArn"]
    ecs.get_waiter("tasks_running").wait(cluster="default", tasks=[arn], WaiterConfig={"Delay": 1, "MaxAttempts": 60})
    pids = container_pids(g, arn)
    tid = arn.rsplit("/", 1)[1]
    g.stop()  # SIGTERM, as Ctrl-C
    log = g.log()
    assert "1 task(s) keep running under their shims" in log and "debug sweep --all" in log, log
    for _, (shim, ctr) in pids.items():
        assert os.path.exists(f"/proc/{ctr}"), "the task survives a clean exit"
    # The warm pool is gone; only the task's own namespace is left.
    left = [n for n in os.listdir(f"{g.dir}/run/netns") if n.startswith("gn-")]
    assert len(left) == 1, left
    # Likewise its ephemeral storage filesystem.
    assert len(os.listdir(f"{g.dir}/data/ephemeral")) == 1, os.listdir(f"{g.dir}/data/ephemeral")
    r = g.cli("debug", "sweep", "--all")
    assert "removed 1 tasks" in r.stdout, r.stdout
    for _, (shim, ctr) in pids.items():
        deadline = time.time() + 10
        while os.path.exists(f"/proc/{ctr}") and time.time() < deadline:
            time.sleep(0.1)
        assert not os.path.exists(f"/proc/{ctr}"), "sweep --all stops every task"
    assert not [n for n in os.listdir(f"{g.dir}/run/netns") if n.startswith("gn-")]
    assert subprocess.run(["ip", "link", "show", g.bridge], capture_output=True).returncode != 0, "the bridge is gone"
    tables = subprocess.run(["nft", "list", "tables"], capture_output=True, text=True).stdout
    assert f"gantry_{g.bridge}" not in tables, tables
    assert not os.path.exists(f"{g.dir}/data/tasks/{tid}")
    # Every mount the node made is gone (namespaces, template, ephemeral storage), and with
    # them the loop devices.
    assert mounts_under(g.dir) == [], mounts_under(g.dir)
    assert not os.listdir(f"{g.dir}/data/ephemeral")
    backing = [open(f).read() for f in glob.glob("/sys/block/loop*/loop/backing_file")]
    assert not [b for b in backing if b.startswith(g.dir)], backing


def test_bridge_ports_are_published_again_after_a_restart(fresh):
    import urllib.request
    g = fresh
    ecs = g.client("ecs")
    from conftest import IMAGE
    ecs.register_task_definition(family="pub", containerDefinitions=[
        {"name": "web", "image": IMAGE, "memory": 32, "stopTimeout": 2,
         "command": ["sh", "-c", "trap 'exit 0' TERM; httpd -f -p 80 -h /www & wait"],
         "portMappings": [{"containerPort": 80, "hostPort": 0}]}])
    arn = ecs.run_task(cluster="default", taskDefinition="pub")["tasks"][0]["taskArn"]
    ecs.get_waiter("tasks_running").wait(cluster="default", tasks=[arn], WaiterConfig={"Delay": 1, "MaxAttempts": 60})
    port = ecs.describe_tasks(cluster="default", tasks=[arn])["tasks"][0]["containers"][0]["networkBindings"][0]["hostPort"]

    def fetch():
        for _ in range(40):
            try:
                return urllib.request.urlopen(f"http://127.0.0.1:{port}/index.html", timeout=2).read().decode()
            except OSError:
                time.sleep(0.25)
        raise AssertionError(f"port {port} does not answer")

    assert "hello from gantry httpd" in fetch()
    g.kill9()
    g.start()
    assert "hello from gantry httpd" in fetch(), "the relay is bound again by the restarted agent"
    # The node firewall, rebuilt at the start, lets tasks reach the port again, until it stops.
    published = ["nft", "list", "set", "inet", "gantry_" + g.bridge.replace("-", "_"), "published"]
    assert f"tcp . {port}" in subprocess.run(published, capture_output=True, text=True, check=True).stdout
    ecs = g.client("ecs")
    ecs.stop_task(cluster="default", task=arn)
    wait_stopped(ecs, "default", [arn])
    wait_for("the port closed to tasks", lambda: f"tcp . {port}" not in subprocess.run(
        published, capture_output=True, text=True, check=True).stdout, 5)
