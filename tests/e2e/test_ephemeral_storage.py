"""Ephemeral storage is enforced: a task's root filesystem has the task's ephemeralStorage
size (df shows it, writes past it fail with ENOSPC), and the task's metadata reports what it
uses."""
import json

from conftest import NETWORK, awslogs, log_lines, register, wait_for

# Prints: the root filesystem's size in KiB; the metadata's storage metrics after a 64 MiB
# write; the result of asking for more than the size (fallocate, which a failed ext4
# allocation leaves holding what it got: the disk is full after it), then of a plain write.
SCRIPT = r"""
echo "size $(df -k / | tail -n 1 | awk '{print $2}')"
dd if=/dev/zero of=/written bs=1M count=64 2>/dev/null; sync
echo "metrics $(wget -q -O- "$ECS_CONTAINER_METADATA_URI_V4/task" | tr -d '\n' | grep -o '"EphemeralStorageMetrics":{[^}]*}')"
echo "fallocate $(fallocate -l 300G /huge 2>&1 && echo ALLOCATED)"
echo "write $(dd if=/dev/zero of=/more bs=1M count=16 2>&1 | grep -o 'No space left on device' | head -n 1)"
echo done
sleep 600
"""


def run_storage_task(gantry, family, **td):
    ecs, logs = gantry.client("ecs"), gantry.client("logs")
    arn = register(ecs, family, [{"name": "app", "command": ["sh", "-c", SCRIPT],
                                  "logConfiguration": awslogs(f"/storage/{family}")}], **td)["taskDefinitionArn"]
    task = ecs.run_task(cluster="default", taskDefinition=arn, launchType="FARGATE",
                        networkConfiguration=NETWORK)["tasks"][0]
    stream = f"ecs/app/{task['taskArn'].rsplit('/', 1)[1]}"
    lines = wait_for(f"{family}'s probes", lambda: log_lines(logs, f"/storage/{family}", stream), 90)
    ecs.stop_task(cluster="default", task=task["taskArn"])
    described = ecs.describe_tasks(cluster="default", tasks=[task["taskArn"]])["tasks"][0]
    return dict(line.split(" ", 1) for line in lines if " " in line), described


def assert_bounded(found, gib):
    size_kib = int(found["size"])
    # The filesystem's own metadata takes a little of the image: within 3% below the size.
    assert gib * 1024 * 1024 * 0.97 < size_kib <= gib * 1024 * 1024, found
    metrics = json.loads("{" + found["metrics"] + "}")["EphemeralStorageMetrics"]
    assert metrics["Reserved"] == gib * 1024 and metrics["Utilized"] >= 64, metrics
    assert "No space left on device" in found["fallocate"] and "ALLOCATED" not in found["fallocate"], found
    assert found["write"] == "No space left on device", found


def test_the_default_size_bounds_a_task(gantry):
    found, described = run_storage_task(gantry, "storage-default")
    assert described["ephemeralStorage"] == {"sizeInGiB": 20}, described
    assert_bounded(found, 20)


def test_a_task_definition_size_bounds_a_task(gantry):
    found, described = run_storage_task(gantry, "storage-21", ephemeralStorage={"sizeInGiB": 21})
    assert described["ephemeralStorage"] == {"sizeInGiB": 21}, described
    assert_bounded(found, 21)


# The writer fills a volume; the reader takes it through volumesFrom, read-only.
WRITER = r"""
echo hello > /data/msg && echo "wrote $(cat /data/msg)"
sleep 600
"""
READER = r"""
while [ ! -s /data/msg ]; do sleep 0.1; done
echo "read $(cat /data/msg)"
echo "readonly $(touch /data/other 2>&1 | grep -o 'Read-only file system' | head -n 1)"
echo "size $(df -k /data | tail -n 1 | awk '{print $2}')"
dd if=/dev/zero of=/scratch/fill bs=1M count=64 2>/dev/null; sync
echo "metrics $(wget -q -O- "$ECS_CONTAINER_METADATA_URI_V4/task" | tr -d '\n' | grep -o '"EphemeralStorageMetrics":{[^}]*}')"
echo done
sleep 600
"""


def test_containers_share_volumes_on_the_tasks_storage(gantry):
    """Fargate's bind mounts: a volume of the task definition, mounted by one container and
    taken by another through volumesFrom (read-only), holds what the first wrote; volumes live
    on the task's ephemeral storage (its size, and what they hold counts as used)."""
    ecs, logs = gantry.client("ecs"), gantry.client("logs")
    group = "/storage/volumes"
    containers = [
        {"name": "writer", "command": ["sh", "-c", WRITER], "logConfiguration": awslogs(group),
         "mountPoints": [{"sourceVolume": "shared", "containerPath": "/data"}]},
        {"name": "reader", "command": ["sh", "-c", READER], "logConfiguration": awslogs(group),
         "volumesFrom": [{"sourceContainer": "writer", "readOnly": True}],
         "mountPoints": [{"sourceVolume": "scratch", "containerPath": "/scratch"}],
         "dependsOn": [{"containerName": "writer", "condition": "START"}]},
    ]
    td = register(ecs, "storage-volumes", containers, volumes=[{"name": "shared"}, {"name": "scratch", "host": {}}])
    described = ecs.describe_task_definition(taskDefinition=td["taskDefinitionArn"])["taskDefinition"]
    assert described["volumes"] == [{"name": "shared"}, {"name": "scratch", "host": {}}], described["volumes"]
    assert described["containerDefinitions"][1]["volumesFrom"] == [{"sourceContainer": "writer", "readOnly": True}]
    task = ecs.run_task(cluster="default", taskDefinition=td["taskDefinitionArn"], launchType="FARGATE",
                        networkConfiguration=NETWORK)["tasks"][0]
    tid = task["taskArn"].rsplit("/", 1)[1]
    try:
        lines = wait_for("the reader's probes", lambda: log_lines(logs, group, f"ecs/reader/{tid}"), 90)
        found = dict(line.split(" ", 1) for line in lines if " " in line)
        assert found["read"] == "hello", found
        assert found["readonly"] == "Read-only file system", found
        assert 20 * 1024 * 1024 * 0.97 < int(found["size"]) <= 20 * 1024 * 1024, found
        metrics = json.loads("{" + found["metrics"] + "}")["EphemeralStorageMetrics"]
        assert metrics["Utilized"] >= 64, metrics
        wait_for("the writer's line", lambda: log_lines(logs, group, f"ecs/writer/{tid}", until="wrote hello"), 30)
    finally:
        ecs.stop_task(cluster="default", task=task["taskArn"])


def test_volumes_gantry_cannot_provide_are_refused(gantry):
    import botocore.exceptions
    import pytest
    ecs = gantry.client("ecs")
    app = {"name": "app", "command": ["true"], "mountPoints": [{"sourceVolume": "v", "containerPath": "/v"}]}
    for volume, message in [({"name": "v", "host": {"sourcePath": "/etc"}}, "host.sourcePath is not supported"),
                            ({"name": "v", "efsVolumeConfiguration": {"fileSystemId": "fs-1"}}, "EFS is not offered"),
                            ({"name": "w"}, "not one of the task definition's volumes")]:
        with pytest.raises(botocore.exceptions.ClientError) as e:
            register(ecs, "storage-bad-volume", [app], volumes=[volume])
        assert e.value.response["Error"]["Code"] == "ClientException", e.value.response
        assert message in e.value.response["Error"]["Message"], e.value.response
    with pytest.raises(botocore.exceptions.ClientError) as e:
        register(ecs, "storage-bad-volume", [dict(app, mountPoints=[{"sourceVolume": "v", "containerPath": "../etc"}])],
                 volumes=[{"name": "v"}])
    assert "must be an absolute path" in e.value.response["Error"]["Message"]
