"""ECS Exec: ExecuteCommand with boto3, and `gantry exec` into a running container: output and
exit code, standard input, an interactive terminal (its size, its exit code), and the
refusals: a task without execute command enabled, a caller without ecs:ExecuteCommand, a
stream opened without its token or twice."""
import base64
import http.client
import json
import os
import pty
import select
import subprocess
import time

import boto3
import botocore.config
import botocore.exceptions
import pytest

from conftest import ACCOUNT, GANTRY, KEY, REGION, SECRET, register, run


def code(call, *args, **kw):
    with pytest.raises(botocore.exceptions.ClientError) as e:
        call(*args, **kw)
    return e.value.response["Error"]["Code"], e.value.response["Error"]["Message"]


@pytest.fixture
def running(gantry, ecs):
    register(ecs, "exec-me", [{"name": "app", "command": ["sleep", "600"]}])
    task = run(ecs, "default", "exec-me", enableExecuteCommand=True)[0]
    ecs.get_waiter("tasks_running").wait(cluster="default", tasks=[task["taskArn"]], WaiterConfig={"Delay": 1, "MaxAttempts": 60})
    yield task["taskArn"]
    ecs.stop_task(cluster="default", task=task["taskArn"])


def cli_env(gantry):
    return dict(os.environ, GANTRY_ENDPOINT=gantry.endpoint, AWS_ACCESS_KEY_ID=KEY, AWS_SECRET_ACCESS_KEY=SECRET,
                AWS_REGION=REGION, AWS_CONFIG_FILE="/dev/null", AWS_SHARED_CREDENTIALS_FILE="/dev/null")


def gantry_exec(gantry, *args, **kw):
    return subprocess.run([GANTRY, "exec", *args], env=cli_env(gantry), capture_output=True, text=True, timeout=60, **kw)


def test_gantry_exec_runs_a_command_in_the_container(gantry, running):
    task_id = running.rsplit("/", 1)[1]
    p = gantry_exec(gantry, task_id, "--", "sh", "-c", "echo out; echo err >&2; cat /proc/1/cmdline | tr '\\0' ' '; exit 3")
    assert p.returncode == 3, p.stderr
    assert "out" in p.stdout and "err" in p.stdout and "sleep 600" in p.stdout, p.stdout
    # Standard input reaches the command with -i.
    p = gantry_exec(gantry, "-i", running, "--", "sh", "-c", "read x; echo got-$x", input="hello\n")
    assert (p.returncode, p.stdout.strip()) == (0, "got-hello"), p.stderr
    # A client that goes away does not leave its command running in the container.
    left = subprocess.Popen([GANTRY, "exec", running, "--", "sleep", "4321"], env=cli_env(gantry))

    def sleeping():
        return "sleep 4321" in gantry_exec(gantry, running, "--", "ps", "-o", "args").stdout
    from conftest import wait_for
    wait_for("the command to run", sleeping, 20)
    left.kill()
    left.wait()
    wait_for("the command to stop", lambda: not sleeping(), 20)


def test_an_interactive_terminal_has_its_size_and_exit_code(gantry, running):
    master, slave = pty.openpty()
    import fcntl
    import struct
    import termios
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 33, 101, 0, 0))
    proc = subprocess.Popen([GANTRY, "exec", "-it", running, "--", "sh"], env=cli_env(gantry),
                            stdin=slave, stdout=slave, stderr=slave, close_fds=True)
    os.close(slave)
    out = b""

    def read_until(marker, timeout=20):
        nonlocal out
        deadline = time.time() + timeout
        while marker not in out:
            assert time.time() < deadline, f"no {marker!r} in {out!r}"
            r, _, _ = select.select([master], [], [], 0.2)
            if r:
                try:
                    out += os.read(master, 4096)
                except OSError:
                    break
        return out
    os.write(master, b"stty size; tty; echo $((6*7))\n")
    read_until(b"42\r\n")
    assert b"33 101" in out, out
    assert b"/dev/pts/" in out, out
    os.write(master, b"exit 5\n")
    assert proc.wait(timeout=20) == 5
    os.close(master)


def stream_status(gantry, session_id, token):
    """The HTTP status of a WebSocket handshake for a session's stream."""
    c = http.client.HTTPConnection(gantry.endpoint.split("://")[1], timeout=10)
    c.request("GET", f"/ecs-exec/{session_id}", headers={
        "Connection": "Upgrade", "Upgrade": "websocket", "Sec-WebSocket-Version": "13",
        "Sec-WebSocket-Key": base64.b64encode(os.urandom(16)).decode(), "X-Gantry-Exec-Token": token})
    status = c.getresponse().status
    c.close()
    return status


def test_execute_command_answers_as_ecs_and_sessions_open_once_with_their_token(gantry, ecs, running):
    out = ecs.execute_command(cluster="default", task=running, command="/bin/sh", interactive=True)
    s = out["session"]
    assert out["containerName"] == "app" and out["taskArn"] == running and out["interactive"]
    assert s["sessionId"].startswith("ecs-execute-command-") and s["streamUrl"].endswith(f"/ecs-exec/{s['sessionId']}")
    assert stream_status(gantry, s["sessionId"], "not-the-token") == 403
    assert stream_status(gantry, s["sessionId"], s["tokenValue"]) == 101
    assert stream_status(gantry, s["sessionId"], s["tokenValue"]) == 403, "a session opens once"
    # Interactive only, as ECS.
    assert code(ecs.execute_command, task=running, command="sh", interactive=False)[0] == "InvalidParameterException"
    # A task run without execute command enabled.
    plain = run(ecs, "default", "exec-me")[0]["taskArn"]
    c, m = code(ecs.execute_command, task=plain, command="sh", interactive=True)
    assert c == "InvalidParameterException" and "execute command was not enabled" in m
    ecs.stop_task(cluster="default", task=plain)
    # A caller without ecs:ExecuteCommand on the task.
    iam = gantry.client("iam")
    iam.create_user(UserName="viewer")
    key = iam.create_access_key(UserName="viewer")["AccessKey"]
    iam.put_user_policy(UserName="viewer", PolicyName="read", PolicyDocument=json.dumps(
        {"Statement": [{"Effect": "Allow", "Action": "ecs:Describe*", "Resource": "*"}]}))
    viewer = boto3.client("ecs", endpoint_url=gantry.endpoint, region_name=REGION, aws_access_key_id=key["AccessKeyId"],
                          aws_secret_access_key=key["SecretAccessKey"],
                          config=botocore.config.Config(retries={"max_attempts": 1}))
    c, m = code(viewer.execute_command, task=running, command="sh", interactive=True)
    assert c == "AccessDeniedException" and "ecs:ExecuteCommand" in m
    assert f"arn:aws:ecs:{REGION}:{ACCOUNT}:task/default/" in m, m


def test_sessions_are_logged_as_the_clusters_execute_command_configuration_says(gantry, ecs, logs):
    from conftest import awslogs, execution_role, wait_for
    iam = gantry.client("iam")

    def refused(config):
        return code(ecs.create_cluster, clusterName="exec-bad", configuration={"executeCommandConfiguration": config})
    assert refused({"logging": "OVERRIDE"}) == ("InvalidParameterException",
                                                 "When logging is OVERRIDE, logConfiguration must be specified.")
    c, m = refused({"logging": "OVERRIDE", "logConfiguration": {"s3BucketName": "b", "cloudWatchLogGroupName": "g"}})
    assert c == "InvalidParameterException" and "does not offer S3" in m
    assert "does not offer KMS" in refused({"kmsKeyId": "alias/k"})[1]
    logs.create_log_group(logGroupName="/exec/sessions")
    config = {"executeCommandConfiguration": {
        "logging": "OVERRIDE", "logConfiguration": {"cloudWatchLogGroupName": "/exec/sessions"}}}
    created = ecs.create_cluster(clusterName="exec-logged", configuration=config)["cluster"]
    assert created["configuration"] == config
    described = ecs.describe_clusters(clusters=["exec-logged"], include=["CONFIGURATIONS"])["clusters"][0]
    assert described["configuration"] == config
    assert "configuration" not in ecs.describe_clusters(clusters=["exec-logged"])["clusters"][0]

    # The session is logged with the task role's permissions, to a stream named by the session.
    writer = execution_role(iam, "exec-logger", {"Statement": [{"Effect": "Allow", "Resource": "*", "Action": [
        "logs:CreateLogStream", "logs:PutLogEvents"]}]})
    register(ecs, "exec-logged", [{"name": "app", "command": ["sleep", "600"]}], taskRoleArn=writer)
    register(ecs, "exec-no-role", [{"name": "app", "command": ["sleep", "600"]}])
    tasks = [run(ecs, "exec-logged", td, enableExecuteCommand=True)[0]["taskArn"] for td in ("exec-logged", "exec-no-role")]
    ecs.get_waiter("tasks_running").wait(cluster="exec-logged", tasks=tasks, WaiterConfig={"Delay": 1, "MaxAttempts": 60})
    p = gantry_exec(gantry, "--cluster", "exec-logged", tasks[0], "--", "sh", "-c", "echo first-line; echo second-line")
    assert p.returncode == 0 and "second-line" in p.stdout, p.stderr

    def logged():
        events = logs.filter_log_events(logGroupName="/exec/sessions")["events"]
        return [e for e in events if e["message"] in ("first-line", "second-line")]
    events = wait_for("the session's output in its log group", lambda: len(logged()) == 2 and logged(), 20)
    assert [e["message"] for e in events] == ["first-line", "second-line"]
    assert events[0]["logStreamName"].startswith("ecs-execute-command-")
    # Without a task role nothing can write the log, and the session is refused, not run unlogged.
    c, m = code(ecs.execute_command, cluster="exec-logged", task=tasks[1], command="sh", interactive=True)
    assert c == "InvalidParameterException" and "no task role" in m, m
    # A log group that does not exist.
    ecs.update_cluster(cluster="exec-logged", configuration={"executeCommandConfiguration": {
        "logging": "OVERRIDE", "logConfiguration": {"cloudWatchLogGroupName": "/exec/missing"}}})
    c, m = code(ecs.execute_command, cluster="exec-logged", task=tasks[0], command="sh", interactive=True)
    assert c == "InvalidParameterException" and "/exec/missing" in m, m
    # NONE: not logged, and no task role needed.
    ecs.update_cluster(cluster="exec-logged", configuration={"executeCommandConfiguration": {"logging": "NONE"}})
    assert gantry_exec(gantry, "--cluster", "exec-logged", tasks[1], "--", "true").returncode == 0
    # DEFAULT: the container's awslogs group.
    ecs.update_cluster(cluster="exec-logged", configuration={"executeCommandConfiguration": {"logging": "DEFAULT"}})
    register(ecs, "exec-awslogs", [{"name": "app", "command": ["sleep", "600"], "logConfiguration": awslogs("/exec/app")}],
             taskRoleArn=writer)
    app = run(ecs, "exec-logged", "exec-awslogs", enableExecuteCommand=True)[0]["taskArn"]
    ecs.get_waiter("tasks_running").wait(cluster="exec-logged", tasks=[app], WaiterConfig={"Delay": 1, "MaxAttempts": 60})
    assert gantry_exec(gantry, "--cluster", "exec-logged", app, "--", "echo", "into-awslogs").returncode == 0
    wait_for("the session in the container's group", lambda: any(
        e["message"] == "into-awslogs" and e["logStreamName"].startswith("ecs-execute-command-")
        for e in logs.filter_log_events(logGroupName="/exec/app")["events"]), 20)
    for t in tasks + [app]:
        ecs.stop_task(cluster="exec-logged", task=t)
