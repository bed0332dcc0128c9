"""`--userns-remap`: a node whose tasks run in user namespaces. Root in the task is host id
1000000: it owns and writes the task's root filesystem, but the node's own files bind-mounted
into the task (its /etc/hosts) are no one's it may write, as they are without the option."""
import glob
import os

import pytest

from conftest import Gantry, awslogs, every_subnet, log_lines, register, wait_for

BASE = 1_000_000
SCRIPT = ("cat /proc/self/uid_map; echo uid $(id -u); echo hi > /made-by-root && echo rootfs written; "
          "(echo x >> /etc/hosts) 2>/dev/null && echo hosts written || echo hosts refused; echo done; sleep 600")


@pytest.fixture(scope="module")
def remapped():
    g = Gantry(instance=43)
    g.env["GANTRY_USERNS_REMAP"] = str(BASE)
    # The tasks' root must be able to walk to the files the node bind-mounts into them.
    os.chmod(g.dir, 0o711)
    try:
        g.start()
        yield g
    finally:
        g.cleanup()


def test_a_tasks_root_is_an_unprivileged_host_id(remapped):
    ecs, logs = remapped.client("ecs"), remapped.client("logs")
    td = register(ecs, "userns", [{"name": "app", "command": ["sh", "-c", SCRIPT],
                                   "logConfiguration": awslogs("/userns/app")}])["taskDefinitionArn"]
    network = every_subnet(remapped.client("ec2"))
    task = ecs.run_task(taskDefinition=td, launchType="FARGATE", networkConfiguration=network)["tasks"][0]
    task_id = task["taskArn"].rsplit("/", 1)[1]

    lines = wait_for("the task's output", lambda: log_lines(logs, "/userns/app", f"ecs/app/{task_id}"), 60)
    assert lines[0].split() == ["0", str(BASE), "65536"], lines
    assert lines[1:4] == ["uid 0", "rootfs written", "hosts refused"], lines
    # On the host the file the task's root made belongs to the range's base.
    storage = open(f"{remapped.dir}/data/tasks/{task_id}/ephemeral").read().strip()
    made = glob.glob(f"{remapped.dir}/data/ephemeral/{storage}/*/upper/made-by-root")
    assert made and os.stat(made[0]).st_uid == BASE, made
    ecs.stop_task(task=task["taskArn"])
