"""Secrets Manager with boto3 and awscli unchanged: versions and staging labels, idempotent
tokens, scheduled deletion and restore, tags, filters, resource policies, AWS's errors; and
values sealed at rest (no plaintext anywhere under the data directory)."""
import os
import stat

import botocore.exceptions
import pytest

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
    needle = SECRET_TEXT.encode()
    for root, _, files in os.walk(os.path.join(gantry.dir, "data")):
        for f in files:
            path = os.path.join(root, f)
            if os.path.isfile(path) and not os.path.islink(path):
                with open(path, "rb") as fh:
                    assert needle not in fh.read(), f"plaintext secret found in {path}"
