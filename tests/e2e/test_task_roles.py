"""Task roles: a task with a taskRoleArn gets its role's temporary credentials from the
credentials endpoint in its own namespace (169.254.170.2, AWS_CONTAINER_CREDENTIALS_RELATIVE_URI),
and the real boto3 inside the task (the host's Python in an image) calls Gantry's API through
the relay (AWS_ENDPOINT_URL) with exactly the role's permissions. RunTask refuses roles ECS
tasks may not assume, and passing a role needs iam:PassRole."""
import json
import os
import shutil
import subprocess
import sys
import tempfile

import boto3
import botocore.config
import botocore.exceptions
import pytest

from conftest import ACCOUNT, NETWORK, REGION, ROOT, awslogs, execution_role, register, run, wait_stopped

PY_IMAGE = "gantry-test/python:latest"
TRUST_ECS = {"Version": "2012-10-17", "Statement": [
    {"Effect": "Allow", "Principal": {"Service": "ecs-tasks.amazonaws.com"}, "Action": "sts:AssumeRole"}]}
TRUST_EC2 = {"Version": "2012-10-17", "Statement": [
    {"Effect": "Allow", "Principal": {"Service": "ec2.amazonaws.com"}, "Action": "sts:AssumeRole"}]}

# What runs in the task: the SDK's own container credentials provider and endpoint setting,
# nothing configured by hand. Prints one JSON line for the test to read from the logs.
PROBE = r"""
import json, os, urllib.request, urllib.error
import boto3, botocore.exceptions
out = {"uri": os.environ.get("AWS_CONTAINER_CREDENTIALS_RELATIVE_URI"),
       "endpoint": os.environ.get("AWS_ENDPOINT_URL")}
def status(url):
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            return r.status, json.load(r)
    except urllib.error.HTTPError as e:
        return e.code, json.load(e)
if out["uri"]:
    out["port80"] = status("http://169.254.170.2" + out["uri"])[1].get("AccessKeyId", "")[:4]
    out["other_id"] = status("http://169.254.170.2/v2/credentials/someone-else")
else:
    out["no_role"] = status("http://169.254.170.2:51679/v2/credentials/x")[0]
try:
    out["arn"] = boto3.client("sts").get_caller_identity()["Arn"]
    ssm = boto3.client("ssm")
    out["allowed"] = ssm.get_parameter(Name="/app/greeting")["Parameter"]["Value"]
    try:
        ssm.get_parameter(Name="/other/secret")
        out["denied"] = "allowed!"
    except botocore.exceptions.ClientError as e:
        out["denied"] = e.response["Error"]["Code"]
except Exception as e:
    out["error"] = f"{type(e).__name__}: {e}"
print("PROBE " + json.dumps(out), flush=True)
"""


@pytest.fixture(scope="module")
def py_image(gantry):
    with tempfile.TemporaryDirectory(dir="/var/tmp") as d:
        site = os.path.join(os.path.dirname(os.path.dirname(boto3.__file__)))
        subprocess.run([sys.executable, os.path.join(ROOT, "tests/fixtures/mkimage.py"), d, "--name", PY_IMAGE,
                        "--python", site], check=True, stdout=subprocess.DEVNULL)
        gantry.cli("image", "load", os.path.join(d, "oci"))
    return PY_IMAGE


def code(call, *args, **kw):
    with pytest.raises(botocore.exceptions.ClientError) as e:
        call(*args, **kw)
    return e.value.response["Error"]["Code"], e.value.response["Error"]["Message"]


def probe_container(group):
    # No instance metadata service is tried: its address is outside what tests may reach.
    return {"name": "probe", "image": PY_IMAGE, "command": ["python3", "-c", PROBE],
            "environment": [{"name": "AWS_EC2_METADATA_DISABLED", "value": "true"}],
            "logConfiguration": awslogs(group)}


def probe_output(gantry, group, task_arn):
    logs = gantry.client("logs")
    task_id = task_arn.rsplit("/", 1)[1]
    events = logs.get_log_events(logGroupName=group, logStreamName=f"ecs/probe/{task_id}")["events"]
    lines = [e["message"] for e in events if e["message"].startswith("PROBE ")]
    assert lines, [e["message"] for e in events]
    return json.loads(lines[0][len("PROBE "):])


def run_probe(gantry, ecs, cluster, family, group, **kw):
    td = register(ecs, family, [probe_container(group)], **kw)
    task = run(ecs, cluster, td["taskDefinitionArn"])[0]
    done = wait_stopped(ecs, cluster, [task["taskArn"]])[0]
    assert done["containers"][0].get("exitCode") == 0, done
    return task, probe_output(gantry, group, task["taskArn"])


def test_a_task_calls_gantry_with_exactly_its_roles_permissions(gantry, py_image):
    iam, ssm, ecs = gantry.client("iam"), gantry.client("ssm"), gantry.client("ecs")
    ecs.create_cluster(clusterName="roles")
    ssm.put_parameter(Name="/app/greeting", Value="hello from ssm", Type="String")
    ssm.put_parameter(Name="/other/secret", Value="not yours", Type="String")
    role = iam.create_role(RoleName="app-task", AssumeRolePolicyDocument=json.dumps(TRUST_ECS))["Role"]
    iam.put_role_policy(RoleName="app-task", PolicyName="params", PolicyDocument=json.dumps({
        "Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "ssm:GetParameter",
                                                "Resource": f"arn:aws:ssm:{REGION}:{ACCOUNT}:parameter/app/*"}]}))

    td = ecs.register_task_definition(family="probe-role", networkMode="awsvpc", requiresCompatibilities=["FARGATE"], cpu="256",
                                      memory="512", taskRoleArn=role["Arn"],
                                      containerDefinitions=[probe_container("/roles/probe")])["taskDefinition"]
    task = run(ecs, "roles", td["taskDefinitionArn"])[0]
    done = wait_stopped(ecs, "roles", [task["taskArn"]])[0]
    assert done["containers"][0].get("exitCode") == 0, done
    out = probe_output(gantry, "/roles/probe", task["taskArn"])
    task_id = task["taskArn"].rsplit("/", 1)[1]
    assert "error" not in out, out["error"]
    assert out["uri"] == f"/v2/credentials/{task_id}"
    assert out["endpoint"] == "http://169.254.170.2:51680"
    # The session is the role's, named by the task id, as ECS names it.
    assert out["arn"] == f"arn:aws:sts::{ACCOUNT}:assumed-role/app-task/{task_id}"
    assert out["allowed"] == "hello from ssm"
    assert out["denied"] == "AccessDeniedException"
    # ECS's port 80 reaches the endpoint (forwarded in the task's namespace); another id does not.
    assert out["port80"] == "ASIA"
    assert out["other_id"] == [400, {"code": "InvalidIdInRequest",
                                     "message": "CredentialsV2Request: Credentials not found"}]
    # The credentials are nowhere in the task's description.
    assert "ASIA" not in json.dumps(ecs.describe_tasks(cluster="roles", tasks=[task["taskArn"]]), default=str)


def test_a_task_without_a_role_gets_no_credentials(gantry, py_image):
    ecs = gantry.client("ecs")
    ecs.create_cluster(clusterName="roles")
    _, out = run_probe(gantry, ecs, "roles", "probe-norole", "/roles/norole")
    assert out["uri"] is None and out["no_role"] == 400
    # With no credentials anywhere, the SDK cannot sign.
    assert out["error"].startswith("NoCredentialsError"), out


def test_run_task_refuses_roles_ecs_may_not_assume_and_needs_pass_role(gantry, py_image):
    iam, ecs = gantry.client("iam"), gantry.client("ecs")
    ecs.create_cluster(clusterName="roles")
    ec2_role = iam.create_role(RoleName="ec2-only", AssumeRolePolicyDocument=json.dumps(TRUST_EC2))["Role"]
    td = register(ecs, "probe-bad", [{"name": "probe", "command": ["true"]}])
    net = NETWORK
    for arn in [ec2_role["Arn"], f"arn:aws:iam::{ACCOUNT}:role/missing"]:
        c, m = code(ecs.run_task, cluster="roles", taskDefinition=td["taskDefinitionArn"], launchType="FARGATE",
                    networkConfiguration=net, overrides={"taskRoleArn": arn})
        assert c == "InvalidParameterException"
        assert m.startswith(f"ECS was unable to assume the role '{arn}' that was provided for this task."), m
    c, m = code(ecs.run_task, cluster="roles", taskDefinition=td["taskDefinitionArn"], launchType="FARGATE",
                networkConfiguration=net, overrides={"executionRoleArn": ec2_role["Arn"]})
    assert c == "InvalidParameterException"

    # A user who may run tasks but not pass the role cannot override it.
    app = iam.create_role(RoleName="app-pass", AssumeRolePolicyDocument=json.dumps(TRUST_ECS))["Role"]
    iam.create_user(UserName="runner")
    iam.put_user_policy(UserName="runner", PolicyName="run", PolicyDocument=json.dumps({
        "Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "ecs:RunTask", "Resource": "*"}]}))
    key = iam.create_access_key(UserName="runner")["AccessKey"]
    runner = boto3.client("ecs", endpoint_url=gantry.endpoint, region_name=REGION,
                          aws_access_key_id=key["AccessKeyId"], aws_secret_access_key=key["SecretAccessKey"],
                          config=botocore.config.Config(retries={"max_attempts": 1}))
    c, m = code(runner.run_task, cluster="roles", taskDefinition=td["taskDefinitionArn"], launchType="FARGATE",
                networkConfiguration=net, overrides={"taskRoleArn": app["Arn"]})
    assert c == "AccessDeniedException" and "iam:PassRole" in m and app["Arn"] in m, m
    # The root may; the overridden role is reported in the task's overrides.
    r = ecs.run_task(cluster="roles", taskDefinition=td["taskDefinitionArn"], launchType="FARGATE",
                     networkConfiguration=net, overrides={"taskRoleArn": app["Arn"]})
    assert r["failures"] == [] and r["tasks"][0]["overrides"]["taskRoleArn"] == app["Arn"]
    wait_stopped(ecs, "roles", [r["tasks"][0]["taskArn"]])


def test_an_execution_role_without_logs_permission_fails_the_start(gantry):
    iam, ecs = gantry.client("iam"), gantry.client("ecs")
    ecs.create_cluster(clusterName="roles")
    no_logs = {"Version": "2012-10-17", "Statement": [
        {"Effect": "Allow", "Action": "secretsmanager:GetSecretValue", "Resource": "*"}]}
    role = execution_role(iam, "exec-no-logs", no_logs)
    td = register(ecs, "no-logs", [{"name": "app", "command": ["true"], "logConfiguration": awslogs("/roles/nologs")}],
                  executionRoleArn=role)
    task = run(ecs, "roles", td["taskDefinitionArn"])[0]
    stopped = wait_stopped(ecs, "roles", [task["taskArn"]])[0]
    task_id = task["taskArn"].rsplit("/", 1)[1]
    assert stopped["stopCode"] == "TaskFailedToStart", stopped
    assert stopped["stoppedReason"].startswith(
        "ResourceInitializationError: failed to validate logger args: create stream has been retried 1 times: "
        f"failed to create Cloudwatch log stream: AccessDeniedException: User: arn:aws:sts::{ACCOUNT}:assumed-role/"
        f"exec-no-logs/{task_id} is not authorized to perform: logs:CreateLogStream on resource: "
        f"arn:aws:logs:{REGION}:{ACCOUNT}:log-group:/roles/nologs:log-stream:ecs/app/{task_id}"), stopped["stoppedReason"]


@pytest.fixture(scope="module")
def private_image():
    """An image in a real registry (Debian's docker-registry) behind htpasswd basic auth."""
    from conftest import free_port, wait_for
    d = tempfile.mkdtemp(prefix="gantry-registry-", dir="/var/tmp")
    htpasswd = subprocess.run(["htpasswd", "-Bbn", "puller", "s3cret-pull"], check=True, capture_output=True).stdout
    open(f"{d}/htpasswd", "wb").write(htpasswd)
    addr = f"127.0.0.1:{free_port()}"
    open(f"{d}/config.yml", "w").write(
        f"version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n    rootdirectory: {d}/storage\n"
        f"http:\n  addr: {addr}\nauth:\n  htpasswd:\n    realm: gantry-test\n    path: {d}/htpasswd\n")
    registry = subprocess.Popen(["docker-registry", "serve", f"{d}/config.yml"], stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
    try:
        import socket

        def listening():
            try:
                socket.create_connection(tuple(addr.split(":")), timeout=0.2).close()
                return True
            except OSError:
                return False
        wait_for("the registry", listening, 30)
        subprocess.run([sys.executable, os.path.join(ROOT, "tests/fixtures/mkimage.py"), f"{d}/img", "--name", "p:1",
                        "--cmd", '["sh", "-c", "echo pulled with credentials"]'], check=True, stdout=subprocess.DEVNULL)
        subprocess.run(["skopeo", "copy", "--quiet", "--dest-tls-verify=false", "--dest-creds=puller:s3cret-pull",
                        f"oci:{d}/img/oci", f"docker://{addr}/private/app:1"], check=True)
        yield f"{addr}/private/app:1"
    finally:
        registry.kill()
        registry.wait()
        shutil.rmtree(d, ignore_errors=True)


def test_repository_credentials_are_read_as_the_execution_role(gantry, private_image):
    iam, ecs, sm = gantry.client("iam"), gantry.client("ecs"), gantry.client("secretsmanager")
    ecs.create_cluster(clusterName="roles")
    creds = sm.create_secret(Name="registry/puller", SecretString=json.dumps(
        {"username": "puller", "password": "s3cret-pull"}))["ARN"]
    wrong = sm.create_secret(Name="registry/wrong", SecretString=json.dumps(
        {"username": "puller", "password": "nope"}))["ARN"]
    no_secrets = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "logs:*", "Resource": "*"}]}

    def run_with(secret, role, group):
        td = register(ecs, "private", [{"name": "app", "image": private_image, "logConfiguration": awslogs(group),
                                        "repositoryCredentials": {"credentialsParameter": secret}}],
                      executionRoleArn=role)
        task = run(ecs, "roles", td["taskDefinitionArn"])[0]
        return task, wait_stopped(ecs, "roles", [task["taskArn"]])[0]
    # Without the secret's permission the task does not start; with the wrong password the
    # registry refuses the pull.
    _, stopped = run_with(creds, execution_role(iam, "exec-no-secrets", no_secrets), "/roles/private-denied")
    assert stopped["stopCode"] == "TaskFailedToStart"
    assert "secretsmanager:GetSecretValue" in stopped["stoppedReason"], stopped["stoppedReason"]
    _, stopped = run_with(wrong, execution_role(iam), "/roles/private-wrong")
    assert stopped["stopCode"] == "TaskFailedToStart"
    assert stopped["stoppedReason"].startswith("CannotPullContainerError"), stopped["stoppedReason"]
    task, stopped = run_with(creds, execution_role(iam), "/roles/private")
    assert stopped["containers"][0].get("exitCode") == 0, stopped
    events = gantry.client("logs").get_log_events(logGroupName="/roles/private",
                                                  logStreamName=f"ecs/app/{task['taskArn'].rsplit('/', 1)[1]}")["events"]
    assert [e["message"] for e in events] == ["pulled with credentials"]
    # Registration: the parameter must be a secret's ARN, and an execution role is needed.
    c, m = code(ecs.register_task_definition, family="p2", containerDefinitions=[
        {"name": "a", "image": private_image, "memory": 64, "repositoryCredentials": {"credentialsParameter": creds}}])
    assert c == "ClientException" and "you must also specify a value for 'executionRoleArn'" in m
