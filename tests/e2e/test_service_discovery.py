"""ECS services in Cloud Map and the node's DNS resolver: tasks are registered while RUNNING
and healthy and deregistered before they stop; tasks resolve the namespace's names through
their resolv.conf (and other names are relayed to the node's resolvers, a stub on loopback
here); a change is answered within a second."""
import re
import subprocess
import time

import pytest
from botocore.exceptions import ClientError

from conftest import NETWORK, STUB_ADDRESS, awslogs, register, vpc_of, wait_for


def gateway(gantry):
    subnet = gantry.node_args[gantry.node_args.index("--subnet") + 1]
    return subnet.rsplit(".", 1)[0] + ".1"


def resolve(server, name, qtype="a"):
    """What the resolver answers, asked from the host with busybox's nslookup."""
    out = subprocess.run(["busybox", "nslookup", f"-type={qtype}", name, server], capture_output=True,
                         text=True, timeout=10).stdout
    if qtype == "srv":
        return sorted(re.findall(r"service = (\d+ \d+ \d+ \S+)", out))
    return sorted(re.findall(r"^Address: (\S+)$", out, re.M))


def probe_output(logs, group, task_arn):
    """The lines a probe task's container `probe` logged so far."""
    try:
        ev = logs.get_log_events(logGroupName=group, logStreamName=f"ecs/probe/{task_arn.rsplit('/', 1)[1]}",
                                 startFromHead=True)["events"]
    except ClientError:
        return []
    return [e["message"] for e in ev]


def test_service_tasks_resolve_by_name_from_inside_tasks(gantry, ecs, logs):
    sd = gantry.client("servicediscovery")
    op = sd.create_private_dns_namespace(Name="sd.internal", Vpc=vpc_of(sd))["OperationId"]
    ns = sd.get_operation(OperationId=op)["Operation"]["Targets"]["NAMESPACE"]
    web = sd.create_service(Name="web", NamespaceId=ns, HealthCheckCustomConfig={},
                            DnsConfig={"DnsRecords": [{"Type": "A", "TTL": 1}, {"Type": "SRV", "TTL": 1}]})["Service"]
    ecs.create_cluster(clusterName="sd")
    td = register(ecs, "sd-web", [{"name": "web", "command": ["httpd", "-f", "-p", "80"],
                                   "portMappings": [{"containerPort": 80}]}])["taskDefinitionArn"]
    base = dict(cluster="sd", taskDefinition=td, launchType="FARGATE", networkConfiguration=NETWORK)
    with pytest.raises(ClientError) as e:
        ecs.create_service(serviceName="web", desiredCount=2, serviceRegistries=[{"registryArn": web["Arn"]}], **base)
    assert e.value.response["Error"]["Code"] == "InvalidParameterException" and "SRV" in e.value.response["Error"]["Message"]
    with pytest.raises(ClientError) as e:
        ecs.create_service(serviceName="web", desiredCount=2, **base, serviceRegistries=[
            {"registryArn": web["Arn"].replace(web["Id"], "srv-nope"), "port": 80}])
    assert "does not exist" in e.value.response["Error"]["Message"]

    registry = {"registryArn": web["Arn"], "containerName": "web", "containerPort": 80}
    svc = ecs.create_service(serviceName="web", desiredCount=2, serviceRegistries=[registry], **base)["service"]
    assert svc["serviceRegistries"] == [registry]
    instances = wait_for("two registered tasks", lambda: (
        lambda i: i if len(i) == 2 else None)(sd.list_instances(ServiceId=web["Id"])["Instances"]))
    tasks = ecs.describe_tasks(cluster="sd", tasks=ecs.list_tasks(cluster="sd", serviceName="web")["taskArns"])["tasks"]
    ips = sorted(t["containers"][0]["networkInterfaces"][0]["privateIpv4Address"] for t in tasks)
    assert sorted(i["Attributes"]["AWS_INSTANCE_IPV4"] for i in instances) == ips
    attrs = instances[0]["Attributes"]
    assert attrs["AWS_INSTANCE_PORT"] == "80" and attrs["ECS_SERVICE_NAME"] == "web"
    assert attrs["ECS_CLUSTER_NAME"] == "sd" and attrs["ECS_TASK_DEFINITION_FAMILY"] == "sd-web"
    assert sorted(i["Id"] for i in instances) == sorted(t["taskArn"].rsplit("/", 1)[1] for t in tasks)
    assert ecs.list_services_by_namespace(namespace="sd.internal")["serviceArns"] == [svc["serviceArn"]]
    assert ecs.list_services_by_namespace(namespace=f"arn:aws:servicediscovery:us-east-1:123456789012:namespace/{ns}")[
        "serviceArns"] == [svc["serviceArn"]]

    gw = gateway(gantry)
    assert resolve(gw, "web.sd.internal") == ips
    srv = resolve(gw, "web.sd.internal", "srv")
    assert len(srv) == 2 and all(s.startswith("1 1 80 ") and s.endswith(".web.sd.internal") for s in srv)

    # From inside a task, through its resolv.conf: the service's tasks, and a name outside
    # Cloud Map relayed to the node's (stub) resolver.
    probe = register(ecs, "sd-probe", [{"name": "probe", "logConfiguration": awslogs("/e2e/sd"), "command": [
        "sh", "-c", "cat /etc/resolv.conf; while true; do "
        "echo \"A $(nslookup web.sd.internal | sed -n 's/^Address: //p' | sort | tr '\\n' ' ')\"; "
        "echo \"X $(nslookup -type=a example.test | sed -n 's/^Address: //p')\"; sleep 0.3; done"]}])
    ptask = ecs.run_task(taskDefinition=probe["taskDefinitionArn"], cluster="sd", launchType="FARGATE",
                         networkConfiguration=NETWORK)["tasks"][0]["taskArn"]

    def probe_lines():
        return probe_output(logs, "/e2e/sd", ptask)

    wanted = "A " + " ".join(ips) + " "
    lines = wait_for("the probe resolving both tasks", lambda: (lambda ls: ls if wanted in ls else None)(probe_lines()))
    assert f"nameserver {gw}" in lines
    wait_for("a relayed lookup", lambda: f"X {STUB_ADDRESS}" in probe_lines())

    # Scale in: the leaving task is deregistered before it stops, and the resolver answers
    # without it within a second of the deregistration.
    ecs.update_service(cluster="sd", service="web", desiredCount=1)
    wait_for("one registered task", lambda: len(sd.list_instances(ServiceId=web["Id"])["Instances"]) == 1)
    gone_at = time.time()
    wait_for("the resolver dropping the task", lambda: len(resolve(gw, "web.sd.internal")) == 1, timeout=5)
    assert time.time() - gone_at < 1.0

    ecs.delete_service(cluster="sd", service="web", force=True)
    wait_for("no registered tasks", lambda: sd.list_instances(ServiceId=web["Id"])["Instances"] == [])
    wait_for("the resolver answering no task", lambda: resolve(gw, "web.sd.internal") == [], timeout=5)
    ecs.stop_task(cluster="sd", task=ptask)
    sd.delete_service(Id=web["Id"])
    sd.delete_namespace(Id=ns)


def published_set(gantry):
    table = "gantry_" + gantry.bridge.replace("-", "_")
    return subprocess.run(["nft", "list", "set", "inet", table, "published"], capture_output=True, text=True,
                          check=True).stdout


def test_bridge_tasks_are_found_by_srv_at_their_nodes_address_and_host_port(gantry, ecs, logs):
    """A bridge-mode service registers each task at its node's address as tasks reach it (the
    task network's gateway in `gantry dev`, whose load balancers get 127.0.0.1) and the host port
    published for its container port; another task resolves the SRV record and reaches it there,
    through the node firewall's exception for published ports, closed again when the task stops."""
    from conftest import IMAGE
    sd = gantry.client("servicediscovery")
    op = sd.create_private_dns_namespace(Name="br.internal", Vpc=vpc_of(sd))["OperationId"]
    ns = sd.get_operation(OperationId=op)["Operation"]["Targets"]["NAMESPACE"]
    echo = sd.create_service(Name="echo", NamespaceId=ns, HealthCheckCustomConfig={},
                             DnsConfig={"DnsRecords": [{"Type": "SRV", "TTL": 1}]})["Service"]
    plain = sd.create_service(Name="plain", NamespaceId=ns, DnsConfig={"DnsRecords": [{"Type": "A", "TTL": 1}]})["Service"]
    ecs.create_cluster(clusterName="sdb")
    td = ecs.register_task_definition(family="sd-bridge", networkMode="bridge", containerDefinitions=[{
        "name": "web", "image": IMAGE, "memory": 64, "command": ["httpd", "-f", "-p", "8080", "-h", "/www"],
        "portMappings": [{"containerPort": 8080, "hostPort": 0}]}])["taskDefinition"]["taskDefinitionArn"]
    base = dict(cluster="sdb", taskDefinition=td, launchType="EC2", desiredCount=1)
    for registry, words in (({"registryArn": echo["Arn"], "port": 8080}, "containerName and containerPort"),
                            ({"registryArn": plain["Arn"], "containerName": "web", "containerPort": 8080}, "SRV record")):
        with pytest.raises(ClientError) as e:
            ecs.create_service(serviceName="bad", serviceRegistries=[registry], **base)
        err = e.value.response["Error"]
        assert err["Code"] == "InvalidParameterException" and words in err["Message"], err

    ecs.create_service(serviceName="echo", **base,
                       serviceRegistries=[{"registryArn": echo["Arn"], "containerName": "web", "containerPort": 8080}])
    instances = wait_for("a registered task", lambda: sd.list_instances(ServiceId=echo["Id"])["Instances"])
    arn = ecs.list_tasks(cluster="sdb", serviceName="echo")["taskArns"][0]
    task = ecs.describe_tasks(cluster="sdb", tasks=[arn])["tasks"][0]
    host_port = task["containers"][0]["networkBindings"][0]["hostPort"]
    gw = gateway(gantry)
    attrs = instances[0]["Attributes"]
    assert (attrs["AWS_INSTANCE_IPV4"], attrs["AWS_INSTANCE_PORT"]) == (gw, str(host_port)), attrs
    srv = resolve(gw, "echo.br.internal", "srv")
    assert len(srv) == 1 and srv[0].startswith(f"1 1 {host_port} "), srv
    assert f"tcp . {host_port}" in published_set(gantry)

    # From an awsvpc task: the SRV record's port and target, the target's address, then an
    # HTTP GET there (static busybox wget cannot resolve names itself, and its -T crashes).
    probe = register(ecs, "sd-br-probe", [{"name": "probe", "logConfiguration": awslogs("/e2e/sdb"), "command": [
        "sh", "-c", "while true; do set -- $(nslookup -type=srv echo.br.internal | "
        "sed -n 's/.*service = 1 1 \\([0-9]*\\) \\(.*\\)$/\\1 \\2/p'); "
        "ip=$(nslookup $2 | sed -n 's/^Address: //p' | head -1); "
        "echo \"GOT $1 $(timeout 3 wget -q -O - http://$ip:$1/ 2>&1 | head -1)\"; sleep 0.5; done"]}])
    ptask = ecs.run_task(taskDefinition=probe["taskDefinitionArn"], cluster="sdb", launchType="FARGATE",
                         networkConfiguration=NETWORK)["tasks"][0]["taskArn"]

    def probe_lines():
        return probe_output(logs, "/e2e/sdb", ptask)

    try:
        wait_for("the probe reaching the task", lambda: f"GOT {host_port} hello from gantry httpd" in probe_lines())
    except AssertionError:
        print("PROBE", probe_lines()[-5:])
        raise

    ecs.delete_service(cluster="sdb", service="echo", force=True)
    wait_for("no registered task", lambda: sd.list_instances(ServiceId=echo["Id"])["Instances"] == [])
    ecs.get_waiter("tasks_stopped").wait(cluster="sdb", tasks=[arn], WaiterConfig={"Delay": 1, "MaxAttempts": 60})
    wait_for("the published port closed to tasks", lambda: f"tcp . {host_port}" not in published_set(gantry), 5)
    ecs.stop_task(cluster="sdb", task=ptask)
    for s in (echo, plain):
        sd.delete_service(Id=s["Id"])
    sd.delete_namespace(Id=ns)
