"""Cluster mode on one machine: two `gantry server`s on a real etcd and three `gantry agent`s,
each agent with its own data dir, run dir, bridge and subnet, joined with a token and talking
mutual TLS. Placement over zones, a killed agent's tasks replaced elsewhere and its stale
containers stopped on return, a killed leader's controllers taken over, and the protocol's
refusals (no certificate, a wrong or foreign token, another node's name)."""
import base64
import datetime
import json
import os
import shutil
import signal
import ssl
import subprocess
import tempfile
import time
import urllib.error
import urllib.request

import boto3
import botocore.config
import botocore.exceptions
import pytest

from conftest import (ACCOUNT, GANTRY, IMAGE, Gantry, KEY, SECRET, awslogs, every_subnet, execution_role, free_port,
                      register, run, vpc_of, wait_for)
from test_etcd import etcd, etcd_member  # noqa: F401  (fixtures)

NODE_TIMEOUT = "5"


class Server:
    def __init__(self, store, name):
        self.dir = tempfile.mkdtemp(prefix=f"gantry-{name}-", dir="/var/tmp")
        self.port, self.agent_port = free_port(), free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self.agent_url = f"https://127.0.0.1:{self.agent_port}"
        self.store = store
        self.proc = None

    def start(self, env, *extra, node_timeout=NODE_TIMEOUT):
        log = open(os.path.join(self.dir, "server.log"), "a")
        self.proc = subprocess.Popen([GANTRY, "--data-dir", f"{self.dir}/data", "server", "--store", self.store,
                                      "--listen", f"127.0.0.1:{self.port}", "--agent-listen", f"127.0.0.1:{self.agent_port}",
                                      "--node-timeout", node_timeout, "--no-profile", *extra],
                                     env=env, stdout=log, stderr=subprocess.STDOUT)

    def log(self):
        return open(os.path.join(self.dir, "server.log")).read()

    def kill9(self):
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()

    def terminate(self):
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=15)

    def stop(self):
        self.terminate()
        shutil.rmtree(self.dir, ignore_errors=True)


class Agent(Gantry):
    """A node: Gantry's per-instance dirs, bridge and subnet, running `gantry agent`."""

    def start_agent(self, servers, token_file, name, zone, pool=None, api=None):
        self.name = name
        log = open(os.path.join(self.dir, "dev.log"), "a")
        extra = ["--capacity-provider", pool] if pool else []
        extra += ["--api-endpoint", api] if api else []
        if not hasattr(self, "metrics_port"):
            self.metrics_port = free_port()
        extra += ["--metrics-listen", f"127.0.0.1:{self.metrics_port}"]
        self.proc = subprocess.Popen([GANTRY, *self.node_args, "agent", "--server", ",".join(servers),
                                      "--join-token-file", token_file, "--node", name, "--zone", zone, *extra],
                                     env=self.env, stdout=log, stderr=subprocess.STDOUT)


def ecs_of(agent, server):
    agent.endpoint = server.endpoint
    return agent.client("ecs")


def ec2_of(agent):
    """EC2 through the server `ecs_of` pointed the agent's clients at."""
    return agent.client("ec2")


@pytest.fixture
def cluster(etcd):  # noqa: F811
    servers = [Server(f"etcd://{etcd}/cluster-e2e", n) for n in ("s1", "s2")]
    agents = []
    try:
        agents = [Agent(instance=5 + i) for i in range(3)]
        # Every server seals secrets with the same key: the first to start makes it.
        env = dict(agents[0].env, GANTRY_SECRETS_KEY_FILE=os.path.join(servers[0].dir, "secrets.key"))
        for s in servers:
            s.start(env)
        for s in servers:
            wait_for("the server to listen", lambda: _listening(s.port), 30)
        token = subprocess.run([GANTRY, "--data-dir", f"{servers[0].dir}/data", "server", "token", "create",
                                "--store", servers[0].store], check=True, capture_output=True, text=True, env=env).stdout.strip()
        token_file = os.path.join(servers[0].dir, "token")
        open(token_file, "w").write(token)
        for i, a in enumerate(agents):
            a.start_agent([s.agent_url for s in servers], token_file, f"node-{i}", f"us-east-1{'abc'[i]}",
                          api=f"127.0.0.1:{servers[0].port}")
        yield servers, agents, token_file
    finally:
        for a in agents:
            a.cleanup()
        for s in servers:
            s.stop()


def wait_for_nodes(ecs, n):
    """Until n nodes are container instances of the default cluster."""
    wait_for(f"{n} nodes", lambda: len(ecs.list_container_instances(cluster="default")["containerInstanceArns"]) == n, 60)


def _listening(port):
    import socket
    try:
        socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
        return True
    except OSError:
        return False


def _zones(ecs, service):
    arns = ecs.list_tasks(cluster="default", serviceName=service, desiredStatus="RUNNING")["taskArns"]
    if not arns:
        return {}
    out = {}
    for t in ecs.describe_tasks(cluster="default", tasks=arns)["tasks"]:
        if t["lastStatus"] == "RUNNING":
            out[t["availabilityZone"]] = out.get(t["availabilityZone"], 0) + 1
    return out


def test_a_cluster_spreads_replaces_lost_nodes_and_fails_over(cluster):
    servers, agents, token_file = cluster
    ecs = ecs_of(agents[0], servers[1])
    wait_for_nodes(ecs, 3)
    loop = "trap 'exit 0' TERM; while :; do sleep 0.1; done"
    register(ecs, "spread", [{"name": "app", "command": ["sh", "-c", loop], "stopTimeout": 2}])
    ecs.create_service(serviceName="web", taskDefinition="spread", desiredCount=6, launchType="FARGATE",
                       networkConfiguration=every_subnet(ec2_of(agents[0])))
    wait_for("2/2/2 over three zones", lambda: sorted(_zones(ecs, "web").values()) == [2, 2, 2], 60)
    # Tasks go only where their subnets are: one subnet is one node's network, in its zone.
    ec2 = ec2_of(agents[0])
    first = ec2.describe_subnets()["Subnets"][0]
    only = ecs.run_task(cluster="default", taskDefinition="spread", count=3, launchType="FARGATE",
                        networkConfiguration={"awsvpcConfiguration": {"subnets": [first["SubnetId"]]}})["tasks"]
    assert {t["availabilityZone"] for t in only} == {first["AvailabilityZone"]}
    assert all({"name": "subnetId", "value": first["SubnetId"]} in t["attachments"][0]["details"] for t in only)
    for t in only:
        ecs.stop_task(cluster="default", task=t["taskArn"])

    # kill -9 one agent: its tasks are stopped as ECS words a lost host and replaced elsewhere.
    lost = agents[2]
    lost_tasks = os.listdir(os.path.join(lost.dir, "data", "tasks"))
    assert len(lost_tasks) == 2
    lost.kill9()
    t0 = time.time()
    wait_for("replacements on the other nodes",
             lambda: sorted(_zones(ecs, "web").items()) == [("us-east-1a", 3), ("us-east-1b", 3)], 30)
    assert time.time() - t0 < 30
    stopped = ecs.list_tasks(cluster="default", serviceName="web", desiredStatus="STOPPED")["taskArns"]
    described = ecs.describe_tasks(cluster="default", tasks=stopped)["tasks"]
    assert {t["stopCode"] for t in described} == {"TerminationNotice"}
    assert {t["stoppedReason"] for t in described} == {"Host EC2 (instance node-2) stopped/terminated"}

    # It comes back: the replaced tasks' containers are stopped and removed, not run twice.
    lost.start_agent([s.agent_url for s in servers], token_file, "node-2", "us-east-1c")
    wait_for("the stale tasks removed", lambda: not any(
        os.path.exists(os.path.join(lost.dir, "data", "tasks", t)) for t in lost_tasks), 30)
    assert sum(_zones(ecs, "web").values()) == 6

    # kill -9 the leading server: the other takes the controllers over and scales the service.
    leader = next(s for s in servers if "leads the controllers" in s.log())
    other = next(s for s in servers if s is not leader)
    leader.kill9()
    ecs = ecs_of(agents[0], other)
    t0 = time.time()
    wait_for("the other server to lead", lambda: "leads the controllers" in other.log(), 15)
    assert time.time() - t0 < 10, "controllers moved within 10 s"
    ecs.update_service(cluster="default", service="web", desiredCount=3)
    wait_for("scale-in by the new leader", lambda: sum(_zones(ecs, "web").values()) == 3, 30)
    ecs.update_service(cluster="default", service="web", desiredCount=0)
    wait_for("scale to zero", lambda: sum(_zones(ecs, "web").values()) == 0, 30)


def _instance_in(ecs, zone):
    """The container instance of the node in `zone` (one node per zone here)."""
    arns = ecs.list_container_instances(cluster="default")["containerInstanceArns"]
    for ci in ecs.describe_container_instances(cluster="default", containerInstances=arns)["containerInstances"]:
        if {"name": "ecs.availability-zone", "value": zone} in ci["attributes"]:
            return ci["containerInstanceArn"]
    raise AssertionError(f"no container instance in {zone}")


def _revisions(ecs, service):
    arns = ecs.list_tasks(cluster="default", serviceName=service, desiredStatus="RUNNING")["taskArns"]
    tasks = ecs.describe_tasks(cluster="default", tasks=arns)["tasks"] if arns else []
    return sorted(t["taskDefinitionArn"].split(":")[-1] for t in tasks if t["lastStatus"] == "RUNNING")


def test_draining_a_paused_agent_and_a_deployment_across_leader_death(cluster):
    servers, agents, token_file = cluster
    ecs = ecs_of(agents[0], servers[0])
    wait_for_nodes(ecs, 3)
    loop = "trap 'exit 0' TERM; while :; do sleep 0.1; done"
    register(ecs, "chaos", [{"name": "app", "command": ["sh", "-c", loop], "stopTimeout": 2}])

    # Placement as ECS documents it: distinctInstance puts each task on its own instance (a
    # fourth finds none); binpack on memory fills one instance before the next.
    net = every_subnet(ec2_of(agents[0]))
    r = ecs.run_task(cluster="default", taskDefinition="chaos", count=4, launchType="EC2", networkConfiguration=net,
                     placementConstraints=[{"type": "distinctInstance"}])
    assert len(r["tasks"]) == 3 and len(r["failures"]) == 1, r["failures"]
    assert len({t["containerInstanceArn"] for t in r["tasks"]}) == 3
    placed = [t["taskArn"] for t in r["tasks"]]
    r = ecs.run_task(cluster="default", taskDefinition="chaos", count=3, launchType="EC2", networkConfiguration=net,
                     placementStrategy=[{"type": "binpack", "field": "memory"}])
    assert r["failures"] == [] and len({t["containerInstanceArn"] for t in r["tasks"]}) == 1
    placed += [t["taskArn"] for t in r["tasks"]]
    for arn in placed:
        ecs.stop_task(cluster="default", task=arn)
    ecs.get_waiter("tasks_stopped").wait(cluster="default", tasks=placed, WaiterConfig={"Delay": 1, "MaxAttempts": 60})

    ecs.create_service(serviceName="svc", taskDefinition="chaos", desiredCount=3, launchType="EC2",
                       networkConfiguration=every_subnet(ec2_of(agents[0])))
    wait_for("1/1/1", lambda: sorted(_zones(ecs, "svc").values()) == [1, 1, 1], 60)

    # Draining node-0 moves its task to the others, the replacement first (100% minimum healthy).
    ecs.update_container_instances_state(cluster="default", containerInstances=[_instance_in(ecs, "us-east-1a")],
                                         status="DRAINING")
    wait_for("node-0 drained", lambda: sorted(_zones(ecs, "svc").items()) in
             ([("us-east-1b", 1), ("us-east-1c", 2)], [("us-east-1b", 2), ("us-east-1c", 1)]), 60)

    # node-1's agent paused past the node timeout: its task is replaced on node-2; resumed, the
    # agent is fenced (its epoch is stale), registers again and stops the replaced container.
    paused = agents[1]
    paused_tasks = os.listdir(os.path.join(paused.dir, "data", "tasks"))
    assert paused_tasks
    paused.proc.send_signal(signal.SIGSTOP)
    try:
        wait_for("node-1's tasks replaced", lambda: sorted(_zones(ecs, "svc").items()) == [("us-east-1c", 3)], 40)
    finally:
        paused.proc.send_signal(signal.SIGCONT)
    wait_for("the paused node's stale containers removed", lambda: not any(
        os.path.exists(os.path.join(paused.dir, "data", "tasks", t)) for t in paused_tasks), 30)
    assert "declared lost and must register again" in paused.log(), "the resumed agent was fenced"
    wait_for("node-1 ACTIVE again", lambda: ecs.describe_container_instances(
        cluster="default", containerInstances=[_instance_in(ecs, "us-east-1b")])["containerInstances"][0]["agentConnected"], 30)
    assert sum(_zones(ecs, "svc").values()) == 3

    # A rolling deployment whose leader dies midway completes under the next leader. One task
    # more than desired at a time (134% of 3 is 4), so it takes several steps.
    register(ecs, "chaos", [{"name": "app", "command": ["sh", "-c", loop], "stopTimeout": 2}])
    ecs.update_service(cluster="default", service="svc", taskDefinition="chaos",
                       deploymentConfiguration={"maximumPercent": 134, "minimumHealthyPercent": 100})
    leader = next(s for s in servers if "leads the controllers" in s.log())
    other = next(s for s in servers if s is not leader)
    midway = wait_for("the deployment to start", lambda: (lambda r: "2" in r and r)(_revisions(ecs, "svc")), 30)
    leader.kill9()
    assert "1" in midway, f"the deployment was still in progress when its leader died: {midway}"
    ecs = ecs_of(agents[0], other)
    wait_for("the deployment completed", lambda: _revisions(ecs, "svc") == ["2", "2", "2"], 60)
    svc = wait_for("one deployment left", lambda: [s for s in ecs.describe_services(
        cluster="default", services=["svc"])["services"] if len(s["deployments"]) == 1], 30)[0]
    assert svc["deployments"][0]["rolloutState"] == "COMPLETED"
    ecs.update_service(cluster="default", service="svc", desiredCount=0)
    wait_for("scale to zero", lambda: sum(_zones(ecs, "svc").values()) == 0, 30)


def test_logs_are_read_from_any_server_and_outlive_their_node(cluster):
    """Every server holds a copy of the logs: what a task shipped is read from either server,
    paging tokens from one work on the other, and the lines stay after the node is lost."""
    servers, agents, token_file = cluster
    ecs = ecs_of(agents[0], servers[0])
    wait_for_nodes(ecs, 3)
    lines = "; ".join(f"echo line-{i}" for i in range(5))
    register(ecs, "talker", [{"name": "app", "command": ["sh", "-c", f"trap 'exit 0' TERM; {lines}; while :; do sleep 0.1; done"],
                              "logConfiguration": awslogs("/cluster/talker"), "stopTimeout": 2}])
    task = run(ecs, "default", "talker", network=every_subnet(ec2_of(agents[0])))[0]
    tid = task["taskArn"].split("/")[-1]
    stream = f"ecs/app/{tid}"
    ecs.get_waiter("tasks_running").wait(cluster="default", tasks=[tid], WaiterConfig={"Delay": 1, "MaxAttempts": 60})

    def messages(server, **kw):
        agents[0].endpoint = server.endpoint
        logs = agents[0].client("logs")
        try:
            r = logs.get_log_events(logGroupName="/cluster/talker", logStreamName=stream, startFromHead=True, **kw)
        except botocore.exceptions.ClientError:
            return None
        return [e["message"] for e in r["events"]], r["nextForwardToken"]

    want = [f"line-{i}" for i in range(5)]
    for s in servers:
        wait_for(f"the lines on {s.endpoint}", lambda: (messages(s) or [[]])[0] == want, 30)
    # A page from one server, the next from the other.
    first, token = messages(servers[0], limit=2)
    assert first == want[:2]
    assert messages(servers[1], limit=2, nextToken=token)[0] == want[2:4]
    agents[0].endpoint = servers[1].endpoint
    filtered = agents[0].client("logs").filter_log_events(logGroupName="/cluster/talker", filterPattern="line-3")
    assert [e["message"] for e in filtered["events"]] == ["line-3"]

    # The task's node is lost: its task stops, its lines stay, and `gantry logs -f` on the
    # other server prints them and returns once the task is STOPPED.
    zone = ecs.describe_tasks(cluster="default", tasks=[tid])["tasks"][0]["availabilityZone"]
    agents["abc".index(zone[-1])].kill9()
    env = dict(agents[0].env, GANTRY_ENDPOINT=servers[1].endpoint, AWS_ACCESS_KEY_ID=KEY, AWS_SECRET_ACCESS_KEY=SECRET,
               AWS_CONFIG_FILE="/dev/null", AWS_SHARED_CREDENTIALS_FILE="/dev/null")
    p = subprocess.run([GANTRY, "logs", "-f", tid], capture_output=True, text=True, env=env, timeout=90)
    assert p.returncode == 0 and p.stdout.split() == want, (p.returncode, p.stdout, p.stderr)
    ecs = ecs_of(agents[0], servers[1])
    assert ecs.describe_tasks(cluster="default", tasks=[tid])["tasks"][0]["stopCode"] == "TerminationNotice"
    assert messages(servers[0])[0] == want


def test_task_metrics_reach_every_server_and_only_from_the_tasks_node(cluster):
    """Agents report their tasks' usage over the agent protocol; every server's copy of the
    metric data holds the AWS/ECS series. A node reporting another node's task is refused."""
    servers, agents, token_file = cluster
    ecs = ecs_of(agents[0], servers[0])
    wait_for_nodes(ecs, 3)
    register(ecs, "busy", [{"name": "app", "command": ["sh", "-c", "trap 'exit 0' TERM; while :; do :; done"]}])
    task = run(ecs, "default", "busy", network=every_subnet(ec2_of(agents[0])))[0]
    tid = task["taskArn"].split("/")[-1]
    ecs.get_waiter("tasks_running").wait(cluster="default", tasks=[tid], WaiterConfig={"Delay": 1, "MaxAttempts": 60})

    def cpu(server):
        agents[0].endpoint = server.endpoint
        now = datetime.datetime.now(datetime.timezone.utc)
        out = agents[0].client("cloudwatch").get_metric_statistics(
            Namespace="AWS/ECS", MetricName="CPUUtilization", Dimensions=[{"Name": "ClusterName", "Value": "default"}],
            StartTime=now - datetime.timedelta(minutes=5), EndTime=now + datetime.timedelta(minutes=1),
            Period=60, Statistics=["Maximum"])
        return [d["Maximum"] for d in out["Datapoints"]]
    for s in servers:
        assert max(wait_for(f"CPU utilisation on {s.endpoint}", lambda: cpu(s), 60)) > 50
    # The task's node counted its start in its own Prometheus metrics.
    zone = ecs.describe_tasks(cluster="default", tasks=[tid])["tasks"][0]["availabilityZone"]
    node = agents["abc".index(zone[-1])]
    with urllib.request.urlopen(f"http://127.0.0.1:{node.metrics_port}/metrics", timeout=5) as r:
        text = r.read().decode()
    started = [line for line in text.splitlines() if line.startswith('gantry_task_start_seconds_count{phase="total"}')]
    assert started and float(started[0].split()[-1]) >= 1, text[:2000]
    # Another node's certificate, reporting this task.
    reporter = agents[("abc".index(zone[-1]) + 1) % 3]
    ident = os.path.join(reporter.dir, "data", "identity")
    ctx = ssl.create_default_context(cafile=os.path.join(ident, "ca.pem"))
    ctx.check_hostname = False
    ctx.load_cert_chain(os.path.join(ident, "node.pem"), os.path.join(ident, "node-key.pem"))
    key = f"/tasks/{ACCOUNT}/us-east-1/default/{tid}"
    body = json.dumps([{"key": key, "at_ms": 0, "cpu_units": 1024.0, "memory_mib": 1.0}]).encode()
    req = urllib.request.Request(f"{servers[0].agent_url}/v1/usage", data=body, method="POST",
                                 headers={"content-type": "application/json"})
    try:
        with urllib.request.urlopen(req, context=ctx, timeout=5) as r:
            status = r.status
    except urllib.error.HTTPError as e:
        status = e.code
    assert status == 403
    ecs.stop_task(cluster="default", task=tid)


def test_reclaiming_a_spot_node_interrupts_its_tasks(cluster):
    servers, agents, token_file = cluster
    spot = agents[2]
    spot.kill9()
    spot.start_agent([s.agent_url for s in servers], token_file, "node-2", "us-east-1c", pool="FARGATE_SPOT")
    ecs = ecs_of(agents[0], servers[0])
    store = ["--store", servers[0].store]

    def node_line(name):
        out = subprocess.run([GANTRY, "node", "ls", *store], capture_output=True, text=True, env=spot.env, check=True).stdout
        return next((line.split() for line in out.splitlines() if line.startswith(name + " ")), None)

    wait_for("node-2 in the Spot pool", lambda: (node_line("node-2") or [""] * 6)[2:6:3] == ["FARGATE_SPOT", "ACTIVE"], 30)
    wait_for_nodes(ecs, 3)
    loop = "trap 'echo interrupted; exit 0' TERM; echo up; while :; do sleep 0.1; done"
    register(ecs, "spotty", [{"name": "app", "command": ["sh", "-c", loop], "logConfiguration": awslogs("/cluster/spot"),
                              "stopTimeout": 5}])
    tasks = ecs.run_task(cluster="default", taskDefinition="spotty", count=3,
                         capacityProviderStrategy=[{"capacityProvider": "FARGATE_SPOT", "weight": 1}],
                         networkConfiguration=every_subnet(ec2_of(agents[0])))["tasks"]
    arns = [t["taskArn"] for t in tasks]
    ecs.get_waiter("tasks_running").wait(cluster="default", tasks=arns, WaiterConfig={"Delay": 1, "MaxAttempts": 60})
    on_spot = [t["taskArn"] for t in ecs.describe_tasks(cluster="default", tasks=arns)["tasks"]
               if t["availabilityZone"] == "us-east-1c"]
    assert len(on_spot) == 1, "spread over the three nodes"

    # Only Spot capacity is reclaimed.
    p = subprocess.run([GANTRY, "node", "reclaim", "node-0", *store], capture_output=True, text=True, env=spot.env)
    assert p.returncode != 0 and "only Spot capacity is reclaimed" in p.stderr, p.stderr
    p = subprocess.run([GANTRY, "node", "reclaim", "node-2", *store], capture_output=True, text=True, env=spot.env)
    assert p.returncode == 0 and on_spot[0] in p.stdout, (p.stdout, p.stderr)
    assert node_line("node-2")[5] == "RECLAIMING"
    ecs.get_waiter("tasks_stopped").wait(cluster="default", tasks=on_spot, WaiterConfig={"Delay": 1, "MaxAttempts": 30})
    t = ecs.describe_tasks(cluster="default", tasks=on_spot)["tasks"][0]
    assert (t["stopCode"], t["stoppedReason"]) == ("SpotInterruption", "Your Spot Task was interrupted.")
    assert t["containers"][0]["exitCode"] == 0, "it got SIGTERM and exited by its trap"
    agents[0].endpoint = servers[1].endpoint
    events = agents[0].client("logs").get_log_events(logGroupName="/cluster/spot", startFromHead=True,
                                                     logStreamName=f"ecs/app/{on_spot[0].split('/')[-1]}")["events"]
    assert [e["message"] for e in events] == ["up", "interrupted"]
    # Nothing new lands on it during the warning.
    more = ecs.run_task(cluster="default", taskDefinition="spotty", count=2,
                        capacityProviderStrategy=[{"capacityProvider": "FARGATE_SPOT", "weight": 1}],
                        networkConfiguration=every_subnet(ec2_of(agents[0])))["tasks"]
    assert all(t["availabilityZone"] != "us-east-1c" for t in more)
    for arn in arns + [t["taskArn"] for t in more]:
        ecs.stop_task(cluster="default", task=arn)


def _get(url, ctx):
    try:
        with urllib.request.urlopen(url, context=ctx, timeout=5) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def test_every_agent_answers_cloud_map_names(cluster):
    """Each node's resolver (on its bridge's gateway) answers the account's Cloud Map names,
    fed over the agent protocol, and relays other names to the node's (stub) resolvers; a
    bridge-mode task is found by SRV and reached from another node."""
    from conftest import STUB_ADDRESS
    from test_service_discovery import resolve
    servers, agents, _ = cluster
    agents[0].endpoint = servers[0].endpoint
    sd = agents[0].client("servicediscovery")
    op = sd.create_private_dns_namespace(Name="clu.internal", Vpc=vpc_of(sd))["OperationId"]
    ns = sd.get_operation(OperationId=op)["Operation"]["Targets"]["NAMESPACE"]
    db = sd.create_service(Name="db", NamespaceId=ns, DnsConfig={"DnsRecords": [{"Type": "A", "TTL": 1}]})["Service"]
    sd.register_instance(ServiceId=db["Id"], InstanceId="db-1", Attributes={"AWS_INSTANCE_IPV4": "10.99.0.7"})
    gateways = [a.node_args[a.node_args.index("--subnet") + 1].rsplit(".", 1)[0] + ".1" for a in agents]
    for gw in gateways:
        wait_for(f"{gw} to answer", lambda: resolve(gw, "db.clu.internal") == ["10.99.0.7"], 30)
        assert resolve(gw, "example.test") == [STUB_ADDRESS]
    sd.deregister_instance(ServiceId=db["Id"], InstanceId="db-1")
    for gw in gateways:
        wait_for(f"{gw} to forget", lambda: resolve(gw, "db.clu.internal") == [], 10)
    _a_bridge_task_is_reached_from_another_node(agents, servers[0], sd, ns, gateways)


def _a_bridge_task_is_reached_from_another_node(agents, server, sd, ns, gateways):
    """A bridge-mode task on node-2 is registered at node-2's gateway and host port; a task on
    node-0 resolves it there and reaches it through node-0's bridge and the host, which holds
    every node's firewall table: node-0's must let a port node-2 publishes through."""
    from test_service_discovery import probe_output
    ecs = ecs_of(agents[0], server)
    wait_for_nodes(ecs, 3)
    echo = sd.create_service(Name="echo", NamespaceId=ns, HealthCheckCustomConfig={},
                             DnsConfig={"DnsRecords": [{"Type": "SRV", "TTL": 1}]})["Service"]
    td = ecs.register_task_definition(family="clu-bridge", networkMode="bridge", containerDefinitions=[{
        "name": "web", "image": IMAGE, "memory": 64, "command": ["httpd", "-f", "-p", "8080", "-h", "/www"],
        "portMappings": [{"containerPort": 8080, "hostPort": 0}]}])["taskDefinition"]["taskDefinitionArn"]
    ecs.create_service(cluster="default", serviceName="echo", taskDefinition=td, launchType="EC2", desiredCount=1,
                       placementConstraints=[{"type": "memberOf", "expression": "attribute:ecs.availability-zone == us-east-1c"}],
                       serviceRegistries=[{"registryArn": echo["Arn"], "containerName": "web", "containerPort": 8080}])
    instances = wait_for("a registered task", lambda: sd.list_instances(ServiceId=echo["Id"])["Instances"], 60)
    port = instances[0]["Attributes"]["AWS_INSTANCE_PORT"]
    assert instances[0]["Attributes"]["AWS_INSTANCE_IPV4"] == gateways[2], instances
    subnet = next(s["SubnetId"] for s in ec2_of(agents[0]).describe_subnets()["Subnets"]
                  if s["AvailabilityZone"] == "us-east-1a")
    probe = register(ecs, "clu-probe", [{"name": "probe", "logConfiguration": awslogs("/cluster/sd"), "command": [
        "sh", "-c", "while true; do set -- $(nslookup -type=srv echo.clu.internal | "
        "sed -n 's/.*service = 1 1 \\([0-9]*\\) \\(.*\\)$/\\1 \\2/p'); "
        "ip=$(nslookup $2 | sed -n 's/^Address: //p' | head -1); "
        "echo \"GOT $ip:$1 $(timeout 3 wget -q -O - http://$ip:$1/ 2>&1 | head -1)\"; sleep 0.5; done"]}])
    task = run(ecs, "default", probe["taskDefinitionArn"], network={"awsvpcConfiguration": {"subnets": [subnet]}})[0]
    assert task["availabilityZone"] == "us-east-1a", task["availabilityZone"]
    logs = agents[0].client("logs")
    want = f"GOT {gateways[2]}:{port} hello from gantry httpd"
    try:
        wait_for("the probe on node-0 reaching node-2's task", lambda: want in probe_output(logs, "/cluster/sd", task["taskArn"]), 60)
    except AssertionError:
        print("PROBE", probe_output(logs, "/cluster/sd", task["taskArn"])[-5:])
        raise
    ecs.stop_task(cluster="default", task=task["taskArn"])
    ecs.delete_service(cluster="default", service="echo", force=True)


def test_the_agent_protocol_refuses_strangers(cluster):
    servers, agents, token_file = cluster
    s = servers[0]
    wait_for("node-0 to join", lambda: os.path.exists(os.path.join(agents[0].dir, "data", "identity", "node.pem")), 30)
    insecure = ssl.create_default_context()
    insecure.check_hostname = False
    insecure.verify_mode = ssl.CERT_NONE
    # No client certificate: nothing but joining.
    status, body = _get(f"{s.agent_url}/v1/tasks", insecure)
    assert status == 401 and "certificate" in body
    # A certificate from another CA does not pass the handshake.
    d = tempfile.mkdtemp(dir="/var/tmp")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
                    "-keyout", f"{d}/k.pem", "-out", f"{d}/c.pem", "-days", "1", "-subj", "/CN=node-0/O=gantry:nodes"],
                   check=True, capture_output=True)
    forged = ssl.create_default_context()
    forged.check_hostname = False
    forged.verify_mode = ssl.CERT_NONE
    forged.load_cert_chain(f"{d}/c.pem", f"{d}/k.pem")
    with pytest.raises((ssl.SSLError, urllib.error.URLError, ConnectionResetError)):
        urllib.request.urlopen(f"{s.agent_url}/v1/tasks", context=forged, timeout=5).read()
    # Wrong and foreign tokens, and a live node's name, are refused.
    good = open(token_file).read().strip()
    wrong = good[:-1] + ("0" if good[-1] != "0" else "1")
    foreign = "GANTRY1-" + "ab" * 32 + good[len("GANTRY1-") + 64:]
    for token, name, message in [(wrong, "node-x", "wrong join token"), (foreign, "node-y", "CA is not the one"),
                                 (good, "node-0", "cannot join under another's name")]:
        tf = os.path.join(d, "t")
        open(tf, "w").write(token)
        a = agents[1]
        p = subprocess.run([GANTRY, "--data-dir", f"{d}/{name}", "--run-dir", f"{d}/run-{name}", "agent",
                            "--server", s.agent_url, "--join-token-file", tf, "--node", name],
                           capture_output=True, text=True, env=a.env, timeout=30)
        assert p.returncode != 0 and message in p.stderr, (name, p.stderr)
    assert "agent request refused" in s.log()
    shutil.rmtree(d, ignore_errors=True)
    # A node's certificate does not fetch a server's copy of the logs.
    identity = os.path.join(agents[0].dir, "data", "identity")
    as_node = ssl.create_default_context(cafile=os.path.join(identity, "ca.pem"))
    as_node.load_cert_chain(os.path.join(identity, "node.pem"), os.path.join(identity, "node-key.pem"))
    status, body = _get(f"{s.agent_url}/v1/seed/logs", as_node)
    assert status == 403 and "may not fetch" in body, (status, body)
    assert _get(f"{s.agent_url}/v1/seed/logs", insecure)[0] == 401

    # A revoked node's certificate is refused by every server, and the node is then lost.
    store = ["--store", s.store]
    assert subprocess.run([GANTRY, "node", "revoke", "nobody", *store], capture_output=True, text=True,
                          env=agents[0].env).returncode != 0, "a node that never joined"
    wait_for("node-1 to join", lambda: os.path.exists(os.path.join(agents[1].dir, "data", "identity", "node.pem")), 30)
    p = subprocess.run([GANTRY, "node", "revoke", "node-1", *store], capture_output=True, text=True, env=agents[0].env)
    assert p.returncode == 0, p.stderr
    wait_for("node-1's requests refused", lambda: "node node-1: the node's certificates were revoked" in
             "".join(x.log() for x in servers), 30)

    def status(name):
        out = subprocess.run([GANTRY, "node", "ls", *store], capture_output=True, text=True, env=agents[0].env).stdout
        return next((line.split()[5] for line in out.splitlines() if line.startswith(name + " ")), None)
    wait_for("node-1 lost", lambda: status("node-1") == "LOST", 60)
    assert status("node-0") == "ACTIVE"


def test_losing_etcd_answers_503_class_errors_and_recovers(etcd_member):  # noqa: F811
    """With its store gone the API answers a server error at once (never a wrong or empty
    answer), and it serves again, from the same data, when the store returns."""
    g = Gantry.__new__(Gantry)  # only its credentials: no node, no image
    g.env = dict(os.environ, GANTRY_ACCESS_KEY_ID=KEY, GANTRY_SECRET_ACCESS_KEY=SECRET, GANTRY_ACCOUNT_ID=ACCOUNT)
    server = Server(f"etcd://{etcd_member.address}/outage", "outage")
    try:
        server.start(g.env)
        wait_for("the server to listen", lambda: _listening(server.port), 30)
        g.endpoint = server.endpoint
        ecs = g.client("ecs", config=botocore.config.Config(retries={"max_attempts": 1}, read_timeout=20))
        ecs.create_cluster(clusterName="kept")
        etcd_member.kill()
        t0 = time.time()
        with pytest.raises(botocore.exceptions.ClientError) as e:
            ecs.list_clusters()
        assert e.value.response["ResponseMetadata"]["HTTPStatusCode"] >= 500, e.value.response
        assert time.time() - t0 < 15, "the error comes within the store's request timeout"
        with pytest.raises(botocore.exceptions.ClientError):
            ecs.create_cluster(clusterName="not-stored")
        # The lease cannot be kept through the outage: the leader's next keep-alive (a third of
        # the lease's ttl) fails and its controllers stop, before the store returns.
        wait_for("the leader to lose the lease", lambda: "lost the lead" in server.log(), 20)
        etcd_member.start()
        names = wait_for("the API to serve again", lambda: _clusters(ecs), 60)
        assert "kept" in names and "not-stored" not in names, names
        # ... and once it is back, the server campaigns and leads again.
        wait_for("the controllers led again", lambda: server.log().count("leads the controllers") == 2, 30)
    finally:
        server.stop()


def _clusters(ecs):
    try:
        return [a.split("/")[-1] for a in ecs.list_clusters()["clusterArns"]] or None
    except botocore.exceptions.ClientError:
        return None


def test_secrets_reach_tasks_on_remote_nodes(cluster):
    """A secret written through one server is sealed with the shared key, read through the
    other, and injected into a task on a remote node over the agent protocol."""
    import hashlib
    servers, agents, _ = cluster
    ecs = ecs_of(agents[0], servers[1])
    wait_for_nodes(ecs, 3)
    agents[0].endpoint = servers[0].endpoint
    sm = agents[0].client("secretsmanager")
    arn = sm.create_secret(Name="cluster/pw", SecretString="cluster-secret-value")["ARN"]
    agents[0].endpoint = servers[1].endpoint
    assert agents[0].client("secretsmanager").get_secret_value(SecretId=arn)["SecretString"] == "cluster-secret-value"
    register(ecs, "remote-secret", [{
        "name": "app", "command": ["sh", "-c", 'printf %s "$PW" | sha256sum; exec sleep 600'],
        "logConfiguration": awslogs("/cluster/secrets"), "secrets": [{"name": "PW", "valueFrom": arn}]}],
        executionRoleArn=execution_role(agents[0].client("iam")))
    task = run(ecs, "default", "remote-secret", network=every_subnet(ec2_of(agents[0])))[0]
    task_id = task["taskArn"].split("/")[-1]
    logs = agents[0].client("logs")

    def printed():
        try:
            events = logs.get_log_events(logGroupName="/cluster/secrets", logStreamName=f"ecs/app/{task_id}")["events"]
        except logs.exceptions.ResourceNotFoundException:
            return None
        return events[0]["message"].split()[0] if events else None
    assert wait_for("the task's output", printed, 60) == hashlib.sha256(b"cluster-secret-value").hexdigest()
    ecs.stop_task(cluster="default", task=task["taskArn"])


def test_task_roles_reach_tasks_on_remote_nodes(cluster):
    """A task on a remote node gets its role's credentials over the agent protocol, from its
    own credentials endpoint, and reaches the API through the agent's relay."""
    servers, agents, _ = cluster
    ecs = ecs_of(agents[0], servers[1])
    wait_for_nodes(ecs, 3)
    trust = {"Statement": [{"Effect": "Allow", "Principal": {"Service": "ecs-tasks.amazonaws.com"},
                            "Action": "sts:AssumeRole"}]}
    role = agents[0].client("iam").create_role(RoleName="remote", AssumeRolePolicyDocument=json.dumps(trust))["Role"]
    ecs.register_task_definition(
        family="remote-role", networkMode="awsvpc", requiresCompatibilities=["FARGATE"], cpu="256", memory="512",
        taskRoleArn=role["Arn"], containerDefinitions=[{
            "name": "app", "image": IMAGE, "logConfiguration": awslogs("/cluster/roles"),
            "command": ["sh", "-c", 'wget -qO- "http://169.254.170.2$AWS_CONTAINER_CREDENTIALS_RELATIVE_URI"; echo; '
                                    'wget -qO- "$AWS_ENDPOINT_URL/console/" | head -c 15; echo; exec sleep 600']}])
    task = run(ecs, "default", "remote-role", network=every_subnet(ec2_of(agents[0])), enableExecuteCommand=True)[0]
    task_id = task["taskArn"].split("/")[-1]
    logs = agents[0].client("logs")

    def printed():
        try:
            events = logs.get_log_events(logGroupName="/cluster/roles", logStreamName=f"ecs/app/{task_id}")["events"]
        except logs.exceptions.ResourceNotFoundException:
            return None
        return [e["message"] for e in events] if len(events) >= 2 else None
    creds_line, page = wait_for("the task's output", printed, 60)[:2]
    creds = json.loads(creds_line)
    assert creds["RoleArn"] == role["Arn"] and creds["AccessKeyId"].startswith("ASIA")
    assert page.lower() == "<!doctype html>", page
    sts = boto3.client("sts", endpoint_url=servers[1].endpoint, region_name="us-east-1",
                       aws_access_key_id=creds["AccessKeyId"], aws_secret_access_key=creds["SecretAccessKey"],
                       aws_session_token=creds["Token"])
    assert sts.get_caller_identity()["Arn"].endswith(f":assumed-role/remote/{task_id}")

    # ECS Exec through either server: the task's agent dials back the server holding the stream.
    # The session is logged to the container's awslogs group (DEFAULT) with the task role.
    agents[0].client("iam").put_role_policy(RoleName="remote", PolicyName="exec-log", PolicyDocument=json.dumps(
        {"Statement": [{"Effect": "Allow", "Action": ["logs:CreateLogStream", "logs:PutLogEvents"], "Resource": "*"}]}))
    for server in servers:
        env = dict(os.environ, GANTRY_ENDPOINT=server.endpoint, AWS_ACCESS_KEY_ID=KEY, AWS_SECRET_ACCESS_KEY=SECRET,
                   AWS_REGION="us-east-1", AWS_CONFIG_FILE="/dev/null", AWS_SHARED_CREDENTIALS_FILE="/dev/null")
        p = subprocess.run([GANTRY, "exec", "-i", task_id, "--", "sh", "-c", "read x; echo got-$x; hostname; exit 5"],
                           input="remote\n", env=env, capture_output=True, text=True, timeout=60)
        assert p.returncode == 5 and "got-remote" in p.stdout, (p.returncode, p.stdout, p.stderr)
    wait_for("both sessions logged", lambda: len([e for e in logs.filter_log_events(
        logGroupName="/cluster/roles", logStreamNamePrefix="ecs-execute-command-")["events"]
        if e["message"] == "got-remote"]) == 2, 20)
    ecs.stop_task(cluster="default", task=task["taskArn"])


def _etcd_keys(etcd, prefix):
    """Every etcd key under prefix: {key: (value, mod_revision)} (through etcd's JSON gateway)."""
    end = prefix[:-1] + chr(ord(prefix[-1]) + 1)
    body = json.dumps({"key": base64.b64encode(prefix.encode()).decode(),
                       "range_end": base64.b64encode(end.encode()).decode()})
    r = json.load(urllib.request.urlopen(urllib.request.Request(f"http://{etcd}/v3/kv/range", data=body.encode()),
                                         timeout=5))
    return {base64.b64decode(kv["key"]).decode(): (base64.b64decode(kv.get("value", "")).decode(), int(kv["mod_revision"]))
            for kv in r.get("kvs", [])}


def test_a_server_away_past_the_feed_window_reseeds_its_copies(etcd):  # noqa: F811
    """A server away longer than the feeds keep entries for it has gaps in its copies of the
    logs and metrics. Back, it fetches whole copies from the other server (mutual TLS, with its
    server certificate) and serves what was written while it was away, then follows on."""
    g = Gantry.__new__(Gantry)  # only its credentials: no node, no image
    g.env = dict(os.environ, GANTRY_ACCESS_KEY_ID=KEY, GANTRY_SECRET_ACCESS_KEY=SECRET, GANTRY_ACCOUNT_ID=ACCOUNT)
    servers = [Server(f"etcd://{etcd}/reseed", n) for n in ("r1", "r2")]
    first, away = servers

    def client(server, service):
        g.endpoint = server.endpoint
        return g.client(service)

    def messages(server):
        try:
            r = client(server, "logs").get_log_events(logGroupName="/reseed", logStreamName="s", startFromHead=True)
        except botocore.exceptions.ClientError as e:
            return str(e)
        return [e["message"] for e in r["events"]]

    def points(server):
        try:
            r = client(server, "cloudwatch").get_metric_statistics(
                Namespace="Reseed", MetricName="m", StartTime=datetime.datetime.now() - datetime.timedelta(hours=1),
                EndTime=datetime.datetime.now() + datetime.timedelta(minutes=5), Period=3600, Statistics=["SampleCount"])
        except botocore.exceptions.ClientError as e:
            return str(e)
        return sum(p["SampleCount"] for p in r["Datapoints"])

    def put(server, text):
        now = int(time.time() * 1000)
        client(server, "logs").put_log_events(logGroupName="/reseed", logStreamName="s",
                                              logEvents=[{"timestamp": now, "message": text}])
        client(server, "cloudwatch").put_metric_data(Namespace="Reseed", MetricData=[{"MetricName": "m", "Value": 1}])

    try:
        for s in servers:
            s.start(g.env, "--log-feed-window", "1")
        for s in servers:
            wait_for("the server to listen", lambda: _listening(s.port), 30)
        logs = client(first, "logs")
        logs.create_log_group(logGroupName="/reseed")
        logs.create_log_stream(logGroupName="/reseed", logStreamName="s")
        put(first, "before")
        wait_for("both copies to hold the first line", lambda: all(messages(s) == ["before"] for s in servers), 30)
        away.terminate()

        for i in range(3):
            put(first, f"while-away-{i}")
        # The leader trims what is older than the window whatever the absent copy applied:
        # wait until what was written while it was away is gone from both feeds.
        def newest(feed):
            entries = _etcd_keys(etcd, f"/reseed/{feed}/feed/")
            return max(rev for key, (_, rev) in entries.items() if not key.endswith("~trimmed"))
        written = {feed: newest(feed) for feed in ("logs", "metrics")}

        def trimmed(feed):
            mark = _etcd_keys(etcd, f"/reseed/{feed}/feed/~trimmed")
            return mark and int(next(iter(mark.values()))[0]) >= written[feed]
        wait_for("both feeds trimmed past what was written", lambda: trimmed("logs") and trimmed("metrics"), 60)

        away.start(g.env, "--log-feed-window", "1")
        wait_for("the server to listen", lambda: _listening(away.port), 30)
        want = ["before"] + [f"while-away-{i}" for i in range(3)]
        wait_for("the returning server to serve every line", lambda: messages(away) == want, 60)
        wait_for("and every datapoint", lambda: points(away) == 4, 60)
        log = away.log()
        # Both copies, the logs' and the metrics', had a gap and were re-seeded.
        assert log.count("misses trimmed feed entries") == 2, log[-3000:]
        assert log.count("re-seeded this server's copy") == 2, log[-3000:]
        # Re-seeded, it follows the feeds on.
        put(first, "after")
        wait_for("the line written after", lambda: messages(away) == want + ["after"], 30)
        wait_for("and its datapoint", lambda: points(away) == 5, 30)
    finally:
        for s in servers:
            s.stop()
