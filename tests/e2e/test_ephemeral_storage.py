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
