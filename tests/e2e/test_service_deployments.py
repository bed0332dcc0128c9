"""Service deployments and revisions: ListServiceDeployments, DescribeServiceDeployments,
DescribeServiceRevisions and StopServiceDeployment report and control a service's
deployments as ECS does."""
import time

import botocore.exceptions
import pytest

from conftest import register
from test_services import LOOP, NET, stable


def wait_status(ecs, arn, want, timeout=60):
    deadline = time.time() + timeout
    while time.time() < deadline:
        sd = ecs.describe_service_deployments(serviceDeploymentArns=[arn])["serviceDeployments"][0]
        if sd["status"] == want:
            return sd
        time.sleep(0.5)
    raise AssertionError(f"{arn} stayed {sd['status']}, not {want}")


def test_deployments_are_listed_described_and_rolled_back_on_request(gantry, ecs):
    register(ecs, "sd-app", [{"name": "app", "command": ["sh", "-c", LOOP], "stopTimeout": 2}])
    # A release whose tasks never become healthy within the test: its deployment stays in progress.
    register(ecs, "sd-slow", [{"name": "app", "command": ["sh", "-c", LOOP], "stopTimeout": 2,
                               "healthCheck": {"command": ["CMD-SHELL", "exit 1"], "interval": 30, "retries": 10,
                                               "startPeriod": 300}}])
    ecs.create_service(serviceName="sd", taskDefinition="sd-app", desiredCount=1, networkConfiguration=NET)
    stable(ecs, "sd")
    ecs.update_service(service="sd", taskDefinition="sd-app:1", forceNewDeployment=True)
    stable(ecs, "sd")
    listed = ecs.list_service_deployments(service="sd")["serviceDeployments"]
    assert [d["status"] for d in listed] == ["SUCCESSFUL", "SUCCESSFUL"], listed
    newest, first = listed
    assert newest["createdAt"] >= first["createdAt"] and ":service-deployment/default/sd/" in newest["serviceDeploymentArn"]
    described = ecs.describe_service_deployments(serviceDeploymentArns=[newest["serviceDeploymentArn"]])
    sd = described["serviceDeployments"][0]
    assert sd["targetServiceRevision"]["arn"] == newest["targetServiceRevisionArn"]
    assert sd["sourceServiceRevisions"][0]["arn"] == first["targetServiceRevisionArn"]
    assert "finishedAt" in sd and sd["targetServiceRevision"]["runningTaskCount"] == 1
    rev = ecs.describe_service_revisions(serviceRevisionArns=[newest["targetServiceRevisionArn"]])["serviceRevisions"][0]
    assert rev["taskDefinition"].endswith(":task-definition/sd-app:1") and rev["serviceArn"] == sd["serviceArn"]
    missing = ecs.describe_service_deployments(serviceDeploymentArns=[newest["serviceDeploymentArn"] + "0"])
    assert missing["serviceDeployments"] == [] and missing["failures"][0]["reason"] == "MISSING"
    with pytest.raises(botocore.exceptions.ClientError) as e:
        ecs.stop_service_deployment(serviceDeploymentArn=newest["serviceDeploymentArn"])
    assert e.value.response["Error"]["Code"] == "ConflictException"

    # An in-progress deployment stopped with ROLLBACK goes back to the last good revision.
    ecs.update_service(service="sd", taskDefinition="sd-slow")
    deadline = time.time() + 30
    while time.time() < deadline:
        listed = ecs.list_service_deployments(service="sd", status=["IN_PROGRESS"])["serviceDeployments"]
        if listed:
            break
        time.sleep(0.5)
    slow = listed[0]["serviceDeploymentArn"]
    with pytest.raises(botocore.exceptions.ClientError, match="ROLLBACK"):
        ecs.stop_service_deployment(serviceDeploymentArn=slow, stopType="ABORT")
    assert ecs.stop_service_deployment(serviceDeploymentArn=slow, stopType="ROLLBACK")["serviceDeploymentArn"] == slow
    sd = wait_status(ecs, slow, "ROLLBACK_SUCCESSFUL")
    assert sd["rollback"]["reason"] == "Service deployment stopped by StopServiceDeployment."
    s = stable(ecs, "sd")
    assert s["taskDefinition"].endswith(":task-definition/sd-app:1"), s["taskDefinition"]
    assert s["currentServiceDeployment"] == slow, "the deployment carrying the rollback reports as the one rolled back"
    ecs.update_service(service="sd", desiredCount=0)
    ecs.delete_service(service="sd")
