"""Gantry's node as an ECS container instance: describe/list with registered and remaining
resources, attributes and memberOf placement, draining, deregistration, and RunTask failures
when an EC2 task does not fit."""
import pytest
from botocore.exceptions import ClientError

from conftest import IMAGE, fixed_host_port, wait_stopped

LOOP = "trap 'exit 0' TERM; while :; do sleep 0.1; done"


def code(e):
    return e.value.response["Error"]["Code"]


def resources(ci, which):
    return {r["name"]: r["stringSetValue"] if r["type"] == "STRINGSET" else r["integerValue"] for r in ci[which]}


def test_node_is_a_container_instance_with_resources_attributes_and_placement(ecs):
    ecs.create_cluster(clusterName="ci")
    arns = ecs.list_container_instances(cluster="ci")["containerInstanceArns"]
    assert len(arns) == 1 and ":container-instance/ci/" in arns[0]
    ci = ecs.describe_container_instances(cluster="ci", containerInstances=arns)["containerInstances"][0]
    assert ci["status"] == "ACTIVE" and ci["agentConnected"] and ci["ec2InstanceId"].startswith("i-")
    reg = resources(ci, "registeredResources")
    assert reg["CPU"] >= 1024 and reg["MEMORY"] >= 256 and "51679" in reg["PORTS"]
    attrs = {a["name"]: a.get("value") for a in ci["attributes"]}
    assert attrs["ecs.os-type"] == "linux"
    assert ecs.describe_clusters(clusters=["ci"])["clusters"][0]["registeredContainerInstancesCount"] == 1

    # An EC2 task takes its reservation and its fixed host port from the instance. Other
    # tests' tasks may still be stopping on this shared node: wait until it is empty.
    import time
    deadline = time.time() + 90
    while resources(ecs.describe_container_instances(cluster="ci", containerInstances=arns)["containerInstances"][0],
                    "remainingResources")["CPU"] != reg["CPU"]:
        assert time.time() < deadline, "other tests' tasks did not stop within 90 s"
        time.sleep(0.5)
    port = fixed_host_port()
    ecs.register_task_definition(family="ci-web", containerDefinitions=[
        {"name": "a", "image": IMAGE, "memory": 64, "cpu": 128, "stopTimeout": 2, "command": ["sh", "-c", LOOP],
         "portMappings": [{"containerPort": 80, "hostPort": port}]}])
    r = ecs.run_task(cluster="ci", taskDefinition="ci-web")
    task = r["tasks"][0]
    assert r["failures"] == [] and task["containerInstanceArn"] == arns[0]
    ecs.get_waiter("tasks_running").wait(cluster="ci", tasks=[task["taskArn"]], WaiterConfig={"Delay": 1, "MaxAttempts": 60})
    ci = ecs.describe_container_instances(cluster="ci", containerInstances=arns)["containerInstances"][0]
    rem = resources(ci, "remainingResources")
    assert (rem["CPU"], rem["MEMORY"]) == (reg["CPU"] - 128, reg["MEMORY"] - 64) and str(port) in rem["PORTS"]
    assert ci["runningTasksCount"] == 1
    assert ecs.list_tasks(cluster="ci", containerInstance=arns[0])["taskArns"] == [task["taskArn"]]
    # The same fixed host port cannot be placed twice; too much memory cannot be placed at all.
    r = ecs.run_task(cluster="ci", taskDefinition="ci-web")
    assert r["tasks"] == [] and r["failures"] == [{"arn": arns[0], "reason": "RESOURCE:PORTS"}]
    ecs.register_task_definition(family="ci-huge", containerDefinitions=[
        {"name": "a", "image": IMAGE, "memory": 64, "command": ["true"]}], memory=str(reg["MEMORY"] + 1))
    r = ecs.run_task(cluster="ci", taskDefinition="ci-huge", count=2)
    assert r["tasks"] == [] and [f["reason"] for f in r["failures"]] == ["RESOURCE:MEMORY"] * 2

    # Attributes and memberOf.
    ecs.put_attributes(cluster="ci", attributes=[{"name": "stack", "value": "prod", "targetId": arns[0]}])
    listed = ecs.list_attributes(cluster="ci", targetType="container-instance", attributeName="stack")["attributes"]
    assert listed == [{"name": "stack", "value": "prod", "targetType": "container-instance", "targetId": arns[0]}]
    assert ecs.list_container_instances(cluster="ci", filter="attribute:stack == prod")["containerInstanceArns"] == arns
    assert ecs.list_container_instances(cluster="ci", filter="attribute:stack == dev")["containerInstanceArns"] == []
    ecs.register_task_definition(family="ci-dev", placementConstraints=[{"type": "memberOf", "expression": "attribute:stack == dev"}],
                                 containerDefinitions=[{"name": "a", "image": IMAGE, "memory": 16, "command": ["true"]}])
    r = ecs.run_task(cluster="ci", taskDefinition="ci-dev")
    assert r["tasks"] == [] and r["failures"][0]["reason"] == "ATTRIBUTE"
    with pytest.raises(ClientError) as e:
        ecs.run_task(cluster="ci", taskDefinition="ci-web", placementConstraints=[{"type": "memberOf", "expression": "stack == x"}])
    assert code(e) == "InvalidParameterException"
    with pytest.raises(ClientError) as e:
        ecs.put_attributes(cluster="ci", attributes=[{"name": "ecs.os-type", "value": "x", "targetId": arns[0]}])
    assert code(e) == "InvalidParameterException"
    with pytest.raises(ClientError) as e:
        ecs.put_attributes(cluster="ci", attributes=[{"name": "a", "value": "b", "targetId": "0" * 32}])
    assert code(e) == "TargetNotFoundException"
    ecs.delete_attributes(cluster="ci", attributes=[{"name": "stack", "targetId": arns[0]}])
    assert ecs.list_attributes(cluster="ci", targetType="container-instance", attributeName="stack")["attributes"] == []

    # Draining stops placement; deregistering with tasks needs force, and force stops them.
    ecs.update_container_instances_state(cluster="ci", containerInstances=arns, status="DRAINING")
    r = ecs.run_task(cluster="ci", taskDefinition="ci-dev")
    assert r["tasks"] == [] and "not ACTIVE" in r["failures"][0]["reason"]
    ecs.update_container_instances_state(cluster="ci", containerInstances=arns, status="ACTIVE")
    with pytest.raises(ClientError) as e:
        ecs.deregister_container_instance(cluster="ci", containerInstance=arns[0])
    assert code(e) == "InvalidParameterException"
    d = ecs.deregister_container_instance(cluster="ci", containerInstance=arns[0], force=True)["containerInstance"]
    assert d["status"] == "INACTIVE"
    stopped = wait_stopped(ecs, "ci", [task["taskArn"]])[0]
    assert stopped["stoppedReason"] == "Container instance deregistration forced by user"
    assert ecs.list_container_instances(cluster="ci")["containerInstanceArns"] == []
    r = ecs.run_task(cluster="ci", taskDefinition="ci-dev")
    assert r["failures"][0]["reason"] == "No Container Instances were found in your cluster."
    # Registering again brings the node back.
    ci = ecs.register_container_instance(cluster="ci", attributes=[{"name": "stack", "value": "dev"}])["containerInstance"]
    assert ci["status"] == "ACTIVE" and ci["containerInstanceArn"] == arns[0]
    r = ecs.run_task(cluster="ci", taskDefinition="ci-dev")
    assert r["failures"] == [] and len(r["tasks"]) == 1
    wait_stopped(ecs, "ci", [r["tasks"][0]["taskArn"]])


def test_service_scheduling_tags_controllers_and_unplaceable_tasks(ecs):
    import time
    ecs.create_cluster(clusterName="svcx")
    td = ecs.register_task_definition(family="svcx-loop", tags=[{"key": "from", "value": "taskdef"}], containerDefinitions=[
        {"name": "a", "image": IMAGE, "memory": 32, "stopTimeout": 2, "command": ["sh", "-c", LOOP]}])["taskDefinition"]
    # DAEMON: one task per container instance, no desiredCount, not on Fargate.
    for bad in [dict(desiredCount=1), dict(launchType="FARGATE")]:
        with pytest.raises(ClientError) as e:
            ecs.create_service(cluster="svcx", serviceName="d", taskDefinition="svcx-loop", schedulingStrategy="DAEMON", **bad)
        assert code(e) in ("InvalidParameterException", "ClientException"), bad
    ecs.create_service(cluster="svcx", serviceName="daemon", taskDefinition="svcx-loop", schedulingStrategy="DAEMON",
                       tags=[{"key": "team", "value": "ops"}], propagateTags="SERVICE", enableECSManagedTags=True,
                       placementConstraints=[{"type": "memberOf", "expression": "attribute:ecs.os-type == linux"}])
    ecs.get_waiter("services_stable").wait(cluster="svcx", services=["daemon"], WaiterConfig={"Delay": 1, "MaxAttempts": 60})
    s = ecs.describe_services(cluster="svcx", services=["daemon"])["services"][0]
    assert (s["schedulingStrategy"], s["desiredCount"], s["runningCount"]) == ("DAEMON", 1, 1)
    arns = ecs.list_tasks(cluster="svcx", serviceName="daemon")["taskArns"]
    t = ecs.describe_tasks(cluster="svcx", tasks=arns, include=["TAGS"])["tasks"][0]
    tags = {x["key"]: x["value"] for x in t["tags"]}
    assert tags == {"team": "ops", "aws:ecs:clusterName": "svcx", "aws:ecs:serviceName": "daemon"}, tags
    with pytest.raises(ClientError) as e:
        ecs.update_service(cluster="svcx", service="daemon", desiredCount=3)
    assert code(e) == "InvalidParameterException"
    ecs.delete_service(cluster="svcx", service="daemon", force=True)
    # RunTask propagates the task definition's tags when asked.
    r = ecs.run_task(cluster="svcx", taskDefinition="svcx-loop", propagateTags="TASK_DEFINITION")["tasks"][0]
    t = ecs.describe_tasks(cluster="svcx", tasks=[r["taskArn"]], include=["TAGS"])["tasks"][0]
    assert t["tags"] == [{"key": "from", "value": "taskdef"}]
    ecs.stop_task(cluster="svcx", task=r["taskArn"])
    # A service whose tasks cannot be placed says why, in ECS's words.
    ecs.register_task_definition(family="svcx-huge", memory="99999999", containerDefinitions=[
        {"name": "a", "image": IMAGE, "memory": 32, "command": ["sh", "-c", LOOP]}])
    ecs.create_service(cluster="svcx", serviceName="huge", taskDefinition="svcx-huge", desiredCount=1)
    deadline = time.time() + 20
    while True:
        msgs = [e["message"] for e in ecs.describe_services(cluster="svcx", services=["huge"])["services"][0]["events"]]
        if any("was unable to place a task because no container instance met all of its requirements" in m
               and "insufficient memory available" in m for m in msgs):
            break
        assert time.time() < deadline, msgs
        time.sleep(0.3)
    assert len([m for m in msgs if "unable to place" in m]) == 1, "said once while it lasts"
    ecs.delete_service(cluster="svcx", service="huge", force=True)
    # The CODE_DEPLOY controller is stored; Gantry says it starts no tasks for it.
    s = ecs.create_service(cluster="svcx", serviceName="cd", taskDefinition="svcx-loop", desiredCount=1,
                           deploymentController={"type": "CODE_DEPLOY"})["service"]
    assert s["deploymentController"] == {"type": "CODE_DEPLOY"}
    deadline = time.time() + 10
    while not any("CODE_DEPLOY deployment controller" in e["message"]
                  for e in ecs.describe_services(cluster="svcx", services=["cd"])["services"][0]["events"]):
        assert time.time() < deadline
        time.sleep(0.3)
    assert ecs.list_tasks(cluster="svcx", serviceName="cd")["taskArns"] == []
    ecs.delete_service(cluster="svcx", service="cd", force=True)
    ecs.get_waiter("services_inactive").wait(cluster="svcx", services=["cd"], WaiterConfig={"Delay": 1, "MaxAttempts": 30})
    # clientToken makes CreateService idempotent; features Gantry lacks are refused, not ignored.
    a = ecs.create_service(cluster="svcx", serviceName="tok", taskDefinition="svcx-loop", desiredCount=0, clientToken="t-1")["service"]
    b = ecs.create_service(cluster="svcx", serviceName="tok", taskDefinition="svcx-loop", desiredCount=0, clientToken="t-1")["service"]
    assert a["serviceArn"] == b["serviceArn"] and a["createdAt"] == b["createdAt"]
    with pytest.raises(ClientError) as e:
        ecs.create_service(cluster="svcx", serviceName="tok", taskDefinition="svcx-loop", desiredCount=0, clientToken="t-2")
    assert code(e) == "InvalidParameterException"
    with pytest.raises(ClientError) as e:
        ecs.create_service(cluster="svcx", serviceName="sd", taskDefinition="svcx-loop", desiredCount=0,
                           serviceRegistries=[{"registryArn": "arn:aws:servicediscovery:us-east-1:123456789012:service/srv-1"}])
    assert code(e) == "InvalidParameterException" and "does not exist" in e.value.response["Error"]["Message"]
    ecs.delete_service(cluster="svcx", service="tok", force=True)


def test_capacity_providers_and_cluster_default_strategy(ecs):
    from conftest import NETWORK
    asg = {"autoScalingGroupArn": "arn:aws:autoscaling:us-east-1:123456789012:autoScalingGroup:1:autoScalingGroupName/pool",
           "managedScaling": {"status": "ENABLED", "targetCapacity": 90}, "managedTerminationProtection": "DISABLED"}
    cp = ecs.create_capacity_provider(name="pool", autoScalingGroupProvider=asg, tags=[{"key": "k", "value": "v"}])["capacityProvider"]
    assert (cp["name"], cp["status"], cp["updateStatus"]) == ("pool", "ACTIVE", "CREATE_COMPLETE")
    for bad in [dict(name="fargate-x", autoScalingGroupProvider=asg), dict(name="pool", autoScalingGroupProvider=asg),
                dict(name="p2", autoScalingGroupProvider=dict(asg, managedScaling={"targetCapacity": 101}))]:
        with pytest.raises(ClientError) as e:
            ecs.create_capacity_provider(**bad)
        assert code(e) == "InvalidParameterException", bad
    u = ecs.update_capacity_provider(name="pool", autoScalingGroupProvider={"managedScaling": {"targetCapacity": 50}})["capacityProvider"]
    assert u["autoScalingGroupProvider"]["managedScaling"]["targetCapacity"] == 50 and u["updateStatus"] == "UPDATE_COMPLETE"
    d = ecs.describe_capacity_providers(capacityProviders=["pool", "FARGATE", "nope"], include=["TAGS"])
    assert [p["name"] for p in d["capacityProviders"]] == ["pool", "FARGATE"] and d["failures"][0]["reason"] == "MISSING"
    assert d["capacityProviders"][0]["tags"] == [{"key": "k", "value": "v"}]

    ecs.create_cluster(clusterName="cpx")
    ecs.register_task_definition(family="cpx-ec2", containerDefinitions=[{"name": "a", "image": IMAGE, "memory": 16, "command": ["true"]}])
    ecs.register_task_definition(family="cpx-fg", networkMode="awsvpc", requiresCompatibilities=["FARGATE"], cpu="256", memory="512",
                                 containerDefinitions=[{"name": "a", "image": IMAGE, "command": ["true"]}])
    with pytest.raises(ClientError) as e:
        ecs.run_task(cluster="cpx", taskDefinition="cpx-ec2", capacityProviderStrategy=[{"capacityProvider": "pool", "weight": 1}])
    assert "not associated with the cluster" in e.value.response["Error"]["Message"]
    with pytest.raises(ClientError) as e:
        ecs.put_cluster_capacity_providers(cluster="cpx", capacityProviders=["FARGATE", "pool"],
                                           defaultCapacityProviderStrategy=[{"capacityProvider": "FARGATE", "weight": 1},
                                                                            {"capacityProvider": "pool", "weight": 1}])
    assert "mix of capacity providers" in e.value.response["Error"]["Message"]
    c = ecs.put_cluster_capacity_providers(cluster="cpx", capacityProviders=["FARGATE_SPOT", "pool"],
                                           defaultCapacityProviderStrategy=[{"capacityProvider": "pool", "weight": 1}])["cluster"]
    assert c["capacityProviders"] == ["FARGATE_SPOT", "pool"] and c["defaultCapacityProviderStrategy"][0]["capacityProvider"] == "pool"
    # Neither launch type nor strategy: the cluster's default strategy decides.
    t = ecs.run_task(cluster="cpx", taskDefinition="cpx-ec2")["tasks"][0]
    assert (t["launchType"], t["capacityProviderName"]) == ("EC2", "pool") and "containerInstanceArn" in t
    t = ecs.run_task(cluster="cpx", taskDefinition="cpx-fg", networkConfiguration=NETWORK,
                     capacityProviderStrategy=[{"capacityProvider": "FARGATE_SPOT", "weight": 1}])["tasks"][0]
    assert (t["launchType"], t["capacityProviderName"]) == ("FARGATE", "FARGATE_SPOT") and "containerInstanceArn" not in t
    with pytest.raises(ClientError) as e:
        ecs.run_task(cluster="cpx", taskDefinition="cpx-fg", networkConfiguration=NETWORK, launchType="FARGATE",
                     capacityProviderStrategy=[{"capacityProvider": "FARGATE_SPOT", "weight": 1}])
    assert code(e) == "InvalidParameterException"
    with pytest.raises(ClientError) as e:
        ecs.delete_capacity_provider(capacityProvider="pool")
    assert "in use" in e.value.response["Error"]["Message"]
    ecs.put_cluster_capacity_providers(cluster="cpx", capacityProviders=[], defaultCapacityProviderStrategy=[])
    assert ecs.delete_capacity_provider(capacityProvider="pool")["capacityProvider"]["status"] == "INACTIVE"
    names = [p["name"] for p in ecs.describe_capacity_providers()["capacityProviders"]]
    assert names[:2] == ["FARGATE", "FARGATE_SPOT"] and "pool" not in names


def test_start_task_places_on_the_named_instances(ecs):
    ecs.create_cluster(clusterName="start")
    ci = ecs.list_container_instances(cluster="start")["containerInstanceArns"][0]
    ecs.register_task_definition(family="start-one", containerDefinitions=[{"name": "a", "image": IMAGE, "memory": 16, "command": ["true"]}])
    r = ecs.start_task(cluster="start", taskDefinition="start-one", containerInstances=[ci, "0" * 32], startedBy="me")
    assert len(r["tasks"]) == 1 and r["tasks"][0]["containerInstanceArn"] == ci and r["tasks"][0]["launchType"] == "EC2"
    assert r["failures"] == [{"arn": "0" * 32, "reason": "MISSING"}]
    t = wait_stopped(ecs, "start", [r["tasks"][0]["taskArn"]])[0]
    assert t["containers"][0]["exitCode"] == 0 and t["startedBy"] == "me"
    with pytest.raises(ClientError) as e:
        ecs.start_task(cluster="start", taskDefinition="start-one", containerInstances=[])
    assert code(e) == "InvalidParameterException"
