"""Application Auto Scaling with boto3 and awscli unchanged: a target tracking policy on
ECSServiceAverageCPUUtilization scales a service out when its tasks burn CPU and back in,
gradually, when they stop; activities say why in AWS's words; requests are checked."""
import datetime
import time

import botocore.exceptions
import pytest

from conftest import NETWORK, register, wait_for

RESOURCE = "service/scaling/burner"


@pytest.fixture
def aas(gantry):
    return gantry.client("application-autoscaling")


def desired(ecs):
    s = ecs.describe_services(cluster="scaling", services=["burner"])["services"][0]
    return s["desiredCount"], s["runningCount"]


def test_target_tracking_scales_out_fast_and_in_gradually(gantry, ecs, aas):
    ecs.create_cluster(clusterName="scaling")
    # Every task burns its 0.25 vCPU until END (the same moment for all), then idles.
    end = int(time.time()) + 45
    script = ("trap 'exit 0' TERM; while [ $(date +%s) -lt $END ]; do :; done; "
              "while :; do sleep 1; done")
    register(ecs, "burner", [{"name": "app", "command": ["sh", "-c", script],
                              "environment": [{"name": "END", "value": str(end)}]}])
    ecs.create_service(cluster="scaling", serviceName="burner", taskDefinition="burner", desiredCount=1,
                       networkConfiguration=NETWORK, launchType="FARGATE")
    ecs.get_waiter("services_stable").wait(cluster="scaling", services=["burner"],
                                           WaiterConfig={"Delay": 1, "MaxAttempts": 60})
    aas.register_scalable_target(ServiceNamespace="ecs", ResourceId=RESOURCE,
                                 ScalableDimension="ecs:service:DesiredCount", MinCapacity=1, MaxCapacity=3)
    out = aas.put_scaling_policy(
        PolicyName="cpu50", ServiceNamespace="ecs", ResourceId=RESOURCE, ScalableDimension="ecs:service:DesiredCount",
        PolicyType="TargetTrackingScaling",
        TargetTrackingScalingPolicyConfiguration={
            "TargetValue": 50.0, "ScaleOutCooldown": 10, "ScaleInCooldown": 10,
            "PredefinedMetricSpecification": {"PredefinedMetricType": "ECSServiceAverageCPUUtilization"}})
    assert [a["AlarmName"].split("-")[2] for a in out["Alarms"]] == ["AlarmHigh", "AlarmLow"]
    started = time.time()
    wait_for("a second task running", lambda: desired(ecs)[1] >= 2, 40)
    scale_out = time.time() - started
    print(f"\nCPU step to a second task RUNNING: {scale_out:.1f} s (metrics every 2 s, 10-second periods)")
    assert scale_out < 30
    wait_for("the maximum", lambda: desired(ecs) == (3, 3), 60)
    # The burn ends: a minute below 45%, then one task at a time, down to the minimum.
    seen = set()

    def scaled_in():
        d = desired(ecs)[0]
        seen.add(d)
        return d == 1
    wait_for("scale-in to the minimum", scaled_in, max(0, end - time.time()) + 120)
    assert 2 in seen, f"scale-in went one task at a time: {seen}"
    activities = aas.describe_scaling_activities(ServiceNamespace="ecs", ResourceId=RESOURCE)["ScalingActivities"]
    descriptions = [a["Description"] for a in activities]
    assert descriptions[0] == "Setting desired count to 1." and "Setting desired count to 3." in descriptions
    assert all(a["StatusCode"] == "Successful" for a in activities)
    assert "AlarmLow" in activities[0]["Cause"] and activities[0]["Cause"].endswith("triggered policy cpu50")
    assert "AlarmHigh" in activities[-1]["Cause"]
    # Deregistering removes the policy and its alarms.
    aas.deregister_scalable_target(ServiceNamespace="ecs", ResourceId=RESOURCE,
                                   ScalableDimension="ecs:service:DesiredCount")
    cw = gantry.client("cloudwatch")
    assert cw.describe_alarms(AlarmNamePrefix="TargetTracking-service/scaling/burner")["MetricAlarms"] == []
    ecs.delete_service(cluster="scaling", service="burner", force=True)


def test_requests_are_checked_and_the_cli_works(gantry, ecs, aas):
    with pytest.raises(botocore.exceptions.ClientError) as e:
        aas.register_scalable_target(ServiceNamespace="ecs", ResourceId="service/default/nope",
                                     ScalableDimension="ecs:service:DesiredCount", MinCapacity=1, MaxCapacity=2)
    assert e.value.response["Error"]["Code"] == "ValidationException"
    assert "ECS service doesn't exist: service/default/nope" in e.value.response["Error"]["Message"]
    with pytest.raises(botocore.exceptions.ClientError) as e:
        aas.put_scaling_policy(PolicyName="p", ServiceNamespace="ecs", ResourceId="service/default/nope",
                               ScalableDimension="ecs:service:DesiredCount", PolicyType="StepScaling")
    assert e.value.response["Error"]["Code"] == "ObjectNotFoundException"
    targets, _ = gantry.aws("application-autoscaling", "describe-scalable-targets", "--service-namespace", "ecs")
    assert isinstance(targets["ScalableTargets"], list)


def test_a_scheduled_action_raises_the_minimum(gantry, ecs, aas):
    ecs.create_cluster(clusterName="scheduled")
    register(ecs, "napper", [{"name": "app", "command": ["sleep", "3600"]}])
    ecs.create_service(cluster="scheduled", serviceName="napper", taskDefinition="napper", desiredCount=1,
                       networkConfiguration=NETWORK, launchType="FARGATE")
    resource = "service/scheduled/napper"
    aas.register_scalable_target(ServiceNamespace="ecs", ResourceId=resource,
                                 ScalableDimension="ecs:service:DesiredCount", MinCapacity=1, MaxCapacity=4)
    when = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(seconds=6)
    aas.put_scheduled_action(ServiceNamespace="ecs", ScheduledActionName="rush", ResourceId=resource,
                             ScalableDimension="ecs:service:DesiredCount",
                             Schedule=f"at({when.strftime('%Y-%m-%dT%H:%M:%S')})",
                             ScalableTargetAction={"MinCapacity": 2, "MaxCapacity": 4})
    actions = aas.describe_scheduled_actions(ServiceNamespace="ecs", ResourceId=resource)["ScheduledActions"]
    assert [a["ScheduledActionName"] for a in actions] == ["rush"]

    def running_two():
        s = ecs.describe_services(cluster="scheduled", services=["napper"])["services"][0]
        return s["desiredCount"] == 2 and s["runningCount"] == 2
    wait_for("the scheduled minimum", running_two, 40)
    target = aas.describe_scalable_targets(ServiceNamespace="ecs", ResourceIds=[resource])["ScalableTargets"][0]
    assert (target["MinCapacity"], target["MaxCapacity"]) == (2, 4)
    causes = [a["Cause"] for a in aas.describe_scaling_activities(ServiceNamespace="ecs", ResourceId=resource)["ScalingActivities"]]
    assert "scheduled action name rush was triggered" in causes
    aas.delete_scheduled_action(ServiceNamespace="ecs", ScheduledActionName="rush", ResourceId=resource,
                                ScalableDimension="ecs:service:DesiredCount")
    ecs.delete_service(cluster="scheduled", service="napper", force=True)
