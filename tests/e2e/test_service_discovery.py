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
        try:
            ev = logs.get_log_events(logGroupName="/e2e/sd", logStreamName=f"ecs/probe/{ptask.rsplit('/', 1)[1]}",
                                     startFromHead=True)["events"]
        except ClientError:
            return []
        return [e["message"] for e in ev]

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
