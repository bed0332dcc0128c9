"""Task sets (the EXTERNAL deployment controller): an outside tool runs a canary with two task
sets behind one load balancer, moving traffic with listener weights (10% then 100%), making
the new set primary and deleting the old one, which drains and goes."""
import time

import pytest
import requests
from botocore.exceptions import ClientError

from conftest import NETWORK, register, subnets, wait_for
from test_elbv2 import SERVE, target_group, wait_health


def code(e):
    return e.value.response["Error"]["Code"]


def test_a_canary_with_task_sets(gantry, ecs):
    elb = gantry.client("elbv2")
    ecs.create_cluster(clusterName="ts")
    tds = {c: register(ecs, f"ts-{c}", [{"name": "web", "command": ["sh", "-c", SERVE.format(colour=c)],
                                         "portMappings": [{"containerPort": 8080}]}])["taskDefinitionArn"]
           for c in ("blue", "green")}
    groups = {c: target_group(elb, f"e2e-ts-{c}", HealthCheckPath="/health") for c in ("blue", "green")}
    for g in groups.values():
        elb.modify_target_group_attributes(TargetGroupArn=g, Attributes=[
            {"Key": "deregistration_delay.timeout_seconds", "Value": "1"}])
    lb = elb.create_load_balancer(Name="e2e-ts", Subnets=subnets())["LoadBalancers"][0]
    weights = lambda b, g: [{"Type": "forward", "ForwardConfig": {"TargetGroups": [  # noqa: E731
        {"TargetGroupArn": groups["blue"], "Weight": b}, {"TargetGroupArn": groups["green"], "Weight": g}]}}]
    listener = elb.create_listener(LoadBalancerArn=lb["LoadBalancerArn"], Protocol="HTTP", Port=80,
                                   DefaultActions=weights(100, 0))["Listeners"][0]["ListenerArn"]

    svc = ecs.create_service(cluster="ts", serviceName="web", desiredCount=2,
                             deploymentController={"type": "EXTERNAL"})["service"]
    assert svc["deployments"] == [] and svc["deploymentController"] == {"type": "EXTERNAL"}
    with pytest.raises(ClientError) as e:
        ecs.update_service(cluster="ts", service="web", taskDefinition=tds["blue"])
    assert code(e) == "InvalidParameterException" and "task sets" in e.value.response["Error"]["Message"]

    def task_set(colour, percent):
        return ecs.create_task_set(cluster="ts", service="web", taskDefinition=tds[colour], externalId=colour,
                                   launchType="FARGATE", networkConfiguration=NETWORK,
                                   scale={"value": percent, "unit": "PERCENT"},
                                   loadBalancers=[{"targetGroupArn": groups[colour], "containerName": "web",
                                                   "containerPort": 8080}])["taskSet"]

    blue = task_set("blue", 100)
    assert blue["status"] == "ACTIVE" and blue["computedDesiredCount"] == 2 and blue["externalId"] == "blue"
    assert blue["taskSetArn"].endswith(f"task-set/ts/web/{blue['id']}") and blue["id"].startswith("ecs-svc/")
    assert ecs.update_service_primary_task_set(cluster="ts", service="web", primaryTaskSet=blue["id"])["taskSet"]["status"] == "PRIMARY"
    wait_health(elb, groups["blue"], "healthy", 2)
    base = f"http://{lb['DNSName']}"
    colour = lambda: requests.get(f"{base}/", timeout=5).text.split()[0]  # noqa: E731
    assert {colour() for _ in range(10)} == {"blue"}

    # The canary: a green set at half the desired count, then 10% of the traffic.
    green = task_set("green", 50)
    assert green["computedDesiredCount"] == 1
    wait_health(elb, groups["green"], "healthy", 1)
    elb.modify_listener(ListenerArn=listener, DefaultActions=weights(90, 10))
    time.sleep(0.5)
    seen = [colour() for _ in range(100)]
    assert seen.count("green") == 10, seen.count("green")

    # All traffic to green, green at full size and primary; blue is deleted and drains.
    ecs.update_task_set(cluster="ts", service="web", taskSet=green["taskSetArn"], scale={"value": 100, "unit": "PERCENT"})
    wait_health(elb, groups["green"], "healthy", 2)
    elb.modify_listener(ListenerArn=listener, DefaultActions=weights(0, 100))
    time.sleep(0.5)
    assert {colour() for _ in range(10)} == {"green"}
    ecs.update_service_primary_task_set(cluster="ts", service="web", primaryTaskSet=green["id"])
    with pytest.raises(ClientError) as e:
        ecs.delete_task_set(cluster="ts", service="web", taskSet=green["id"])
    assert code(e) == "InvalidParameterException"
    assert ecs.delete_task_set(cluster="ts", service="web", taskSet=blue["id"])["taskSet"]["status"] == "DRAINING"
    wait_for("blue to drain and go", lambda: [t["id"] for t in ecs.describe_task_sets(
        cluster="ts", service="web")["taskSets"]] == [green["id"]])
    described = ecs.describe_services(cluster="ts", services=["web"])["services"][0]
    sets = described["taskSets"]
    assert [(s["id"], s["status"], s["runningCount"]) for s in sets] == [(green["id"], "PRIMARY", 2)]
    assert described["runningCount"] == 2 and described["taskDefinition"] == tds["green"]
    wait_for("steady state", lambda: ecs.describe_task_sets(cluster="ts", service="web")["taskSets"][0][
        "stabilityStatus"] == "STEADY_STATE")
    assert sorted(t["group"] for t in ecs.describe_tasks(cluster="ts", tasks=ecs.list_tasks(
        cluster="ts", serviceName="web")["taskArns"])["tasks"]) == ["service:web", "service:web"]

    missing = ecs.describe_task_sets(cluster="ts", service="web", taskSets=["ecs-svc/0000"])
    assert missing["taskSets"] == [] and missing["failures"][0]["reason"] == "MISSING"
    with pytest.raises(ClientError) as e:
        ecs.update_task_set(cluster="ts", service="web", taskSet="ecs-svc/0000", scale={"value": 50, "unit": "PERCENT"})
    assert code(e) == "TaskSetNotFoundException"
    ecs.create_service(cluster="ts", serviceName="plain", taskDefinition=tds["blue"], desiredCount=0,
                       launchType="FARGATE", networkConfiguration=NETWORK)
    with pytest.raises(ClientError) as e:
        ecs.create_task_set(cluster="ts", service="plain", taskDefinition=tds["blue"], launchType="FARGATE",
                            networkConfiguration=NETWORK)
    assert code(e) == "InvalidParameterException"

    for s in ("web", "plain"):
        ecs.delete_service(cluster="ts", service=s, force=True)
    ecs.get_waiter("services_inactive").wait(cluster="ts", services=["web", "plain"],
                                             WaiterConfig={"Delay": 1, "MaxAttempts": 60})
    elb.delete_load_balancer(LoadBalancerArn=lb["LoadBalancerArn"])
    for g in groups.values():
        elb.delete_target_group(TargetGroupArn=g)
