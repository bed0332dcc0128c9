"""Secrets Manager with boto3 and awscli unchanged: versions and staging labels, idempotent
tokens, scheduled deletion and restore, tags, filters, resource policies, AWS's errors; and
values sealed at rest (no plaintext anywhere under the data directory)."""
import hashlib
import json
import os
import stat

import botocore.exceptions
import pytest

from conftest import awslogs, execution_role, files_holding, log_lines, register, run, wait_for, wait_stopped

SECRET_TEXT = "correct-horse-battery-staple-7f3a"


@pytest.fixture
def sm(gantry):
    return gantry.client("secretsmanager")


def code(call, *args, **kw):
    with pytest.raises(botocore.exceptions.ClientError) as e:
        call(*args, **kw)
    return e.value.response["Error"]["Code"], e.value.response["Error"]["Message"]


def test_versions_and_staging_labels(sm):
    created = sm.create_secret(Name="app/db", SecretString=SECRET_TEXT, Description="db password",
                               Tags=[{"Key": "team", "Value": "core"}])
    arn, v1 = created["ARN"], created["VersionId"]
    assert arn.startswith("arn:aws:secretsmanager:us-east-1:123456789012:secret:app/db-") and len(arn.rsplit("-", 1)[1]) == 6
    got = sm.get_secret_value(SecretId="app/db")
    assert (got["SecretString"], got["VersionId"], got["VersionStages"]) == (SECRET_TEXT, v1, ["AWSCURRENT"])
    # By full ARN and by the ARN without its random suffix.
    assert sm.get_secret_value(SecretId=arn)["VersionId"] == v1
    assert sm.get_secret_value(SecretId=arn.rsplit("-", 1)[0])["VersionId"] == v1

    v2 = sm.put_secret_value(SecretId="app/db", SecretString="second")["VersionId"]
    stages = sm.describe_secret(SecretId="app/db")["VersionIdsToStages"]
    assert stages == {v1: ["AWSPREVIOUS"], v2: ["AWSCURRENT"]}
    assert sm.get_secret_value(SecretId="app/db", VersionStage="AWSPREVIOUS")["SecretString"] == SECRET_TEXT
    assert sm.get_secret_value(SecretId="app/db", VersionId=v1)["SecretString"] == SECRET_TEXT

    # A pending version, then promoted by moving AWSCURRENT.
    token = "a" * 32
    v3 = sm.put_secret_value(SecretId="app/db", SecretString="third", ClientRequestToken=token,
                             VersionStages=["AWSPENDING"])["VersionId"]
    assert v3 == token
    assert sm.get_secret_value(SecretId="app/db")["SecretString"] == "second"
    # The same token and value again is a no-op; another value under it is refused.
    assert sm.put_secret_value(SecretId="app/db", SecretString="third", ClientRequestToken=token,
                               VersionStages=["AWSPENDING"])["VersionId"] == v3
    assert code(sm.put_secret_value, SecretId="app/db", SecretString="other", ClientRequestToken=token)[0] == \
        "ResourceExistsException"
    c, m = code(sm.update_secret_version_stage, SecretId="app/db", VersionStage="AWSCURRENT", MoveToVersionId=v3)
    assert c == "InvalidParameterException" and v2 in m
    sm.update_secret_version_stage(SecretId="app/db", VersionStage="AWSCURRENT", MoveToVersionId=v3,
                                   RemoveFromVersionId=v2)
    stages = sm.describe_secret(SecretId="app/db")["VersionIdsToStages"]
    assert stages[v3] == ["AWSPENDING", "AWSCURRENT"] and stages[v2] == ["AWSPREVIOUS"] and v1 not in stages
    versions = sm.list_secret_version_ids(SecretId="app/db", IncludeDeprecated=True)["Versions"]
    assert {v["VersionId"] for v in versions} == {v1, v2, v3}

    # Binary secrets round-trip as bytes.
    sm.create_secret(Name="app/cert", SecretBinary=b"\x00\x01binary\xff")
    assert sm.get_secret_value(SecretId="app/cert")["SecretBinary"] == b"\x00\x01binary\xff"
    batch = sm.batch_get_secret_value(SecretIdList=["app/db", "app/cert", "app/none"])
    assert {v["Name"] for v in batch["SecretValues"]} == {"app/db", "app/cert"}
    assert [e["ErrorCode"] for e in batch["Errors"]] == ["ResourceNotFoundException"]


def test_list_filters_tags_and_policies(sm):
    sm.create_secret(Name="list/one", SecretString="1", Tags=[{"Key": "env", "Value": "prod"}])
    sm.create_secret(Name="list/two", SecretString="2", Description="staging key")
    names = lambda **kw: [s["Name"] for s in sm.list_secrets(**kw)["SecretList"]]  # noqa: E731
    assert names(Filters=[{"Key": "name", "Values": ["list/"]}]) == ["list/one", "list/two"]
    assert names(Filters=[{"Key": "tag-value", "Values": ["prod"]}]) == ["list/one"]
    assert names(Filters=[{"Key": "description", "Values": ["staging"]}]) == ["list/two"]
    assert names(Filters=[{"Key": "name", "Values": ["list/"]}], SortOrder="desc") == ["list/two", "list/one"]
    page = sm.list_secrets(Filters=[{"Key": "name", "Values": ["list/"]}], MaxResults=1)
    assert len(page["SecretList"]) == 1 and "NextToken" in page
    sm.tag_resource(SecretId="list/two", Tags=[{"Key": "env", "Value": "dev"}])
    sm.untag_resource(SecretId="list/one", TagKeys=["env"])
    assert names(Filters=[{"Key": "tag-key", "Values": ["env"]}]) == ["list/two"]
    policy = '{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Principal":{"AWS":"*"},"Action":"secretsmanager:GetSecretValue","Resource":"*"}]}'
    sm.put_resource_policy(SecretId="list/one", ResourcePolicy=policy)
    assert sm.get_resource_policy(SecretId="list/one")["ResourcePolicy"] == policy
    assert code(sm.put_resource_policy, SecretId="list/one", ResourcePolicy="{not json")[0] == "MalformedPolicyDocumentException"
    sm.delete_resource_policy(SecretId="list/one")
    assert "ResourcePolicy" not in sm.get_resource_policy(SecretId="list/one")


def test_deletion_is_scheduled_restorable_or_forced(sm):
    sm.create_secret(Name="gone/soon", SecretString="x")
    out = sm.delete_secret(SecretId="gone/soon", RecoveryWindowInDays=7)
    assert (out["DeletionDate"] - sm.describe_secret(SecretId="gone/soon")["DeletedDate"]).total_seconds() == 0
    c, m = code(sm.get_secret_value, SecretId="gone/soon")
    assert c == "InvalidRequestException" and "marked for deletion" in m
    assert "gone/soon" not in [s["Name"] for s in sm.list_secrets()["SecretList"]]
    assert "gone/soon" in [s["Name"] for s in sm.list_secrets(IncludePlannedDeletion=True)["SecretList"]]
    assert code(sm.create_secret, Name="gone/soon", SecretString="y")[0] == "ResourceExistsException"
    sm.restore_secret(SecretId="gone/soon")
    assert sm.get_secret_value(SecretId="gone/soon")["SecretString"] == "x"
    assert code(sm.delete_secret, SecretId="gone/soon", RecoveryWindowInDays=3)[0] == "InvalidParameterException"
    assert code(sm.delete_secret, SecretId="gone/soon", RecoveryWindowInDays=7,
                ForceDeleteWithoutRecovery=True)[0] == "InvalidParameterException"
    sm.delete_secret(SecretId="gone/soon", ForceDeleteWithoutRecovery=True)
    assert code(sm.describe_secret, SecretId="gone/soon")[0] == "ResourceNotFoundException"
    # The name is free again at once.
    sm.create_secret(Name="gone/soon", SecretString="z")


def test_bad_requests_get_aws_errors(sm):
    sm.create_secret(Name="dup", SecretString="1")
    c, m = code(sm.create_secret, Name="dup", SecretString="1")
    assert c == "ResourceExistsException" and "dup already exists" in m
    assert code(sm.create_secret, Name="both", SecretString="a", SecretBinary=b"b")[0] == "InvalidParameterException"
    assert code(sm.create_secret, Name="big", SecretString="x" * 65537)[0] == "InvalidParameterException"
    assert code(sm.create_secret, Name="bad name!", SecretString="x")[0] == "InvalidParameterException"
    assert code(sm.get_secret_value, SecretId="nope")[0] == "ResourceNotFoundException"
    assert code(sm.get_secret_value, SecretId="dup", VersionStage="AWSPENDING")[0] == "ResourceNotFoundException"
    assert code(sm.put_secret_value, SecretId="dup")[0] == "InvalidParameterException"
    assert code(sm.rotate_secret, SecretId="dup")[0] == "UnknownOperationException"


def test_values_are_sealed_at_rest_and_the_cli_works(gantry):
    out, _ = gantry.aws("secretsmanager", "create-secret", "--name", "cli/secret", "--secret-string", SECRET_TEXT)
    got, _ = gantry.aws("secretsmanager", "get-secret-value", "--secret-id", out["ARN"])
    assert got["SecretString"] == SECRET_TEXT
    key = os.path.join(gantry.dir, "data", "secrets.key")
    assert stat.S_IMODE(os.stat(key).st_mode) == 0o600 and os.path.getsize(key) == 32
    # Nothing under the data directory holds the plaintext (the store, its WAL, logs, ...).
    assert files_holding(os.path.join(gantry.dir, "data"), SECRET_TEXT.encode()) == []


def sha(text):
    return hashlib.sha256(text.encode()).hexdigest()


def test_containers_get_secrets_that_are_written_nowhere(gantry, ecs, sm, logs):
    ssm = gantry.client("ssm")
    password, api_key = "pw-" + SECRET_TEXT, "key-" + SECRET_TEXT
    arn = sm.create_secret(Name="task/db", SecretString=json.dumps({"username": "admin", "password": password}))["ARN"]
    ssm.put_parameter(Name="/task/api-key", Value=api_key, Type="SecureString")
    # Each variable's hash goes to the log; the metadata endpoint is searched for the value.
    script = ('for v in "$DB_PASSWORD" "$DB_USER" "$API_KEY"; do printf %s "$v" | sha256sum; done; '
              'wget -qO- "$ECS_CONTAINER_METADATA_URI_V4/task" | grep -c -F "$DB_PASSWORD"; '
              'echo done; exec sleep 600')
    td = register(ecs, "with-secrets", [{
        "name": "app", "command": ["sh", "-c", script], "logConfiguration": awslogs("/secrets/app"),
        "secrets": [{"name": "DB_PASSWORD", "valueFrom": f"{arn}:password::"},
                    {"name": "DB_USER", "valueFrom": f"{arn.rsplit('-', 1)[0]}:username::"},
                    {"name": "API_KEY", "valueFrom": "/task/api-key"}]}],
                  executionRoleArn=execution_role(gantry.client("iam")))
    task = run(ecs, "default", td["taskDefinitionArn"])[0]
    task_id = task["taskArn"].split("/")[-1]

    lines = wait_for("the task's output", lambda: log_lines(logs, "/secrets/app", f"ecs/app/{task_id}"), 60)
    hashes = [line.split()[0] for line in lines[:3]]
    assert hashes == [sha(password), sha("admin"), sha(api_key)], lines
    assert lines[3] == "0", "the metadata endpoint must not show a secret"
    described = json.dumps(ecs.describe_tasks(cluster="default", tasks=[task["taskArn"]]), default=str)
    assert password not in described and api_key not in described
    # Nowhere on disk, while the task runs: not the store, the task directory, the bundle, the
    # runtime's state, the logs.
    for value in (password, api_key):
        for root in (os.path.join(gantry.dir, "data"), os.path.join(gantry.dir, "run")):
            assert files_holding(root, value.encode()) == [], f"{value} written under {root}"
    ecs.stop_task(cluster="default", task=task["taskArn"])


def test_a_task_whose_secret_cannot_be_read_fails_to_start(gantry, ecs, sm):
    iam = gantry.client("iam")
    arn = sm.create_secret(Name="locked/db", SecretString="x")["ARN"]
    gantry.client("ssm").put_parameter(Name="/locked/p", Value="y", Type="String")
    # Reads nothing, writes logs: what an execution role without secrets access looks like.
    logs_only = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Resource": "*", "Action": "logs:*"}]}
    bare = execution_role(iam, "exec-logs-only", logs_only)
    full = execution_role(iam)
    denied = "AccessDeniedException: User: arn:aws:sts::123456789012:assumed-role/exec-logs-only/"
    for value_from, role, reason in [
        ("arn:aws:secretsmanager:us-east-1:123456789012:secret:missing-AbCdEf", full, "unable to retrieve secret from asm"),
        ("/no/such/parameter", full, "invalid ssm parameters: /no/such/parameter"),
        (arn, bare, "unable to retrieve secret from asm: service call has been retried 1 time(s): failed to fetch "
                    f"secret {arn} from secrets manager: {denied}"),
        ("/locked/p", bare, f"unable to retrieve secrets from ssm: service call has been retried 1 time(s): {denied}"),
    ]:
        td = register(ecs, "bad-secret", [{"name": "app", "command": ["true"],
                                           "secrets": [{"name": "X", "valueFrom": value_from}]}],
                      executionRoleArn=role)
        task = run(ecs, "default", td["taskDefinitionArn"])[0]
        stopped = wait_stopped(ecs, "default", [task["taskArn"]])[0]
        assert stopped["stopCode"] == "TaskFailedToStart", stopped
        assert stopped["stoppedReason"].startswith(
            "ResourceInitializationError: unable to pull secrets or registry auth: execution resource retrieval failed: "), stopped
        assert reason in stopped["stoppedReason"], stopped["stoppedReason"]
        if role == bare:
            action = "secretsmanager:GetSecretValue" if value_from == arn else "ssm:GetParameters"
            assert f"is not authorized to perform: {action} on resource: " in stopped["stoppedReason"]
    # The secret's resource policy counts for the execution role too: a Deny there stops even
    # a role whose own policy allows the read.
    sm.put_resource_policy(SecretId=arn, ResourcePolicy=json.dumps({"Statement": [{
        "Effect": "Deny", "Principal": {"AWS": full}, "Action": "secretsmanager:GetSecretValue", "Resource": "*"}]}))
    td = register(ecs, "denied-secret", [{"name": "app", "command": ["true"], "secrets": [{"name": "X", "valueFrom": arn}]}],
                  executionRoleArn=full)
    stopped = wait_stopped(ecs, "default", [run(ecs, "default", td["taskDefinitionArn"])[0]["taskArn"]])[0]
    assert "with an explicit deny in a resource-based policy" in stopped["stoppedReason"], stopped["stoppedReason"]
    sm.delete_resource_policy(SecretId=arn)
    # Secrets need an execution role, as ECS says at registration.
    c, m = code(ecs.register_task_definition, family="x", networkMode="awsvpc", requiresCompatibilities=["FARGATE"],
                cpu="256", memory="512", containerDefinitions=[{
                    "name": "app", "image": "x", "secrets": [{"name": "X", "valueFrom": "/locked/p"}]}])
    assert (c, m) == ("ClientException", "When you are specifying container secrets, you must also specify a value "
                                         "for 'executionRoleArn'.")
    # Registration refuses what is not a secret or a parameter.
    c, m = code(ecs.register_task_definition, family="x", networkMode="awsvpc", requiresCompatibilities=["FARGATE"],
                cpu="256", memory="512", executionRoleArn=full, containerDefinitions=[{
                    "name": "app", "image": "x", "secrets": [{"name": "X", "valueFrom": "arn:aws:s3:::bucket/key"}]}])
    assert c == "ClientException" and "neither a Secrets Manager secret nor a Parameter Store parameter" in m


def test_a_secrets_resource_policy_allows_and_denies_with_identity_policies(gantry, sm):
    import boto3
    import botocore.config
    from conftest import ACCOUNT, REGION
    iam = gantry.client("iam")
    arn = sm.create_secret(Name="shared/db", SecretString="s3cret")["ARN"]

    def user(name, policy=None):
        iam.create_user(UserName=name)
        if policy:
            iam.put_user_policy(UserName=name, PolicyName="p", PolicyDocument=json.dumps(policy))
        k = iam.create_access_key(UserName=name)["AccessKey"]
        return boto3.client("secretsmanager", endpoint_url=gantry.endpoint, region_name=REGION,
                            aws_access_key_id=k["AccessKeyId"], aws_secret_access_key=k["SecretAccessKey"],
                            config=botocore.config.Config(retries={"max_attempts": 1}))
    reader = user("rp-reader")
    everyone = user("rp-admin", {"Statement": [{"Effect": "Allow", "Action": "secretsmanager:*", "Resource": "*"}]})
    assert code(reader.get_secret_value, SecretId=arn)[0] == "AccessDeniedException"

    def grant(principal, effect="Allow"):
        return json.dumps({"Version": "2012-10-17", "Statement": [{"Effect": effect, "Principal": {"AWS": principal},
                           "Action": "secretsmanager:GetSecretValue", "Resource": "*"}]})
    # Naming the user lets it read without an identity policy of its own.
    sm.put_resource_policy(SecretId=arn, ResourcePolicy=grant(f"arn:aws:iam::{ACCOUNT}:user/rp-reader"))
    assert reader.get_secret_value(SecretId="shared/db")["SecretString"] == "s3cret"
    # Naming the account only hands the decision to identity policies, as in AWS.
    sm.put_resource_policy(SecretId=arn, ResourcePolicy=grant(ACCOUNT))
    assert code(reader.get_secret_value, SecretId=arn)[0] == "AccessDeniedException"
    assert everyone.get_secret_value(SecretId=arn)["SecretString"] == "s3cret"
    # An explicit deny in the resource policy wins over the identity policy's allow.
    sm.put_resource_policy(SecretId=arn, ResourcePolicy=grant(f"arn:aws:iam::{ACCOUNT}:user/rp-admin", "Deny"))
    c, m = code(everyone.get_secret_value, SecretId=arn)
    assert c == "AccessDeniedException" and "explicit deny in a resource-based policy" in m, m
    # Refused: statements without principals, and a public policy with BlockPublicPolicy.
    no_principal = json.dumps({"Statement": [{"Effect": "Allow", "Action": "secretsmanager:*", "Resource": "*"}]})
    assert code(sm.put_resource_policy, SecretId=arn, ResourcePolicy=no_principal)[0] == "MalformedPolicyDocumentException"
    assert code(sm.put_resource_policy, SecretId=arn, ResourcePolicy=grant("*"), BlockPublicPolicy=True)[0] == \
        "PublicPolicyException"
    sm.delete_resource_policy(SecretId=arn)
    assert everyone.get_secret_value(SecretId=arn)["SecretString"] == "s3cret"
