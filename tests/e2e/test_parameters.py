"""SSM Parameter Store with boto3 and awscli unchanged: String, StringList and SecureString
parameters in a hierarchy, versions and labels with selectors, paths (one level and
recursive), filters, history, tags, AWS's errors; SecureString values decrypted only when
asked, and no value in plaintext under the data directory."""
import os

import botocore.exceptions
import pytest

from conftest import files_holding

HIDDEN = "parameter-plaintext-never-on-disk-91c2"


@pytest.fixture
def ssm(gantry):
    return gantry.client("ssm")


def code(call, *args, **kw):
    with pytest.raises(botocore.exceptions.ClientError) as e:
        call(*args, **kw)
    return e.value.response["Error"]["Code"], e.value.response["Error"]["Message"]


def test_versions_labels_and_selectors(ssm):
    out = ssm.put_parameter(Name="/app/db/host", Value="db1", Type="String")
    assert (out["Version"], out["Tier"]) == (1, "Standard")
    p = ssm.get_parameter(Name="/app/db/host")["Parameter"]
    assert (p["Value"], p["Version"], p["Type"]) == ("db1", 1, "String")
    assert p["ARN"] == "arn:aws:ssm:us-east-1:123456789012:parameter/app/db/host"
    c, m = code(ssm.put_parameter, Name="/app/db/host", Value="db2", Type="String")
    assert c == "ParameterAlreadyExists" and "overwrite" in m
    assert ssm.put_parameter(Name="/app/db/host", Value="db2", Overwrite=True)["Version"] == 2
    assert ssm.get_parameter(Name="/app/db/host:1")["Parameter"]["Value"] == "db1"
    ssm.label_parameter_version(Name="/app/db/host", ParameterVersion=1, Labels=["stable"])
    got = ssm.get_parameter(Name="/app/db/host:stable")["Parameter"]
    assert (got["Value"], got["Selector"]) == ("db1", ":stable")
    # A label names one version: it moves.
    out = ssm.label_parameter_version(Name="/app/db/host", Labels=["stable", "aws-bad", "12"])
    assert out["ParameterVersion"] == 2 and sorted(out["InvalidLabels"]) == ["12", "aws-bad"]
    assert ssm.get_parameter(Name="/app/db/host:stable")["Parameter"]["Version"] == 2
    history = ssm.get_parameter_history(Name="/app/db/host")["Parameters"]
    assert [(h["Version"], h["Value"], h["Labels"]) for h in history] == [(1, "db1", []), (2, "db2", ["stable"])]
    removed = ssm.unlabel_parameter_version(Name="/app/db/host", ParameterVersion=2, Labels=["stable", "nope"])
    assert (removed["RemovedLabels"], removed["InvalidLabels"]) == (["stable"], ["nope"])
    assert code(ssm.get_parameter, Name="/app/db/host:9")[0] == "ParameterVersionNotFound"
    assert code(ssm.get_parameter, Name="/app/none")[0] == "ParameterNotFound"
    # By ARN.
    arn = "arn:aws:ssm:us-east-1:123456789012:parameter/app/db/host"
    assert ssm.get_parameter(Name=arn)["Parameter"]["Value"] == "db2"


def test_secure_strings_paths_and_filters(ssm):
    ssm.put_parameter(Name="/svc/a/password", Value=HIDDEN, Type="SecureString", Description="pw",
                      Tags=[{"Key": "team", "Value": "core"}])
    ssm.put_parameter(Name="/svc/a/hosts", Value="h1,h2", Type="StringList")
    ssm.put_parameter(Name="/svc/b/deep/flag", Value="on", Type="String")
    enc = ssm.get_parameter(Name="/svc/a/password")["Parameter"]["Value"]
    assert enc != HIDDEN and HIDDEN not in enc
    assert ssm.get_parameter(Name="/svc/a/password", WithDecryption=True)["Parameter"]["Value"] == HIDDEN
    one = ssm.get_parameters_by_path(Path="/svc/a", WithDecryption=True)["Parameters"]
    assert {p["Name"]: p["Value"] for p in one} == {"/svc/a/password": HIDDEN, "/svc/a/hosts": "h1,h2"}
    assert ssm.get_parameters_by_path(Path="/svc")["Parameters"] == []
    deep = [p["Name"] for p in ssm.get_parameters_by_path(Path="/svc", Recursive=True)["Parameters"]]
    assert sorted(deep) == ["/svc/a/hosts", "/svc/a/password", "/svc/b/deep/flag"]
    typed = ssm.get_parameters_by_path(Path="/svc", Recursive=True,
                                       ParameterFilters=[{"Key": "Type", "Values": ["SecureString"]}])["Parameters"]
    assert [p["Name"] for p in typed] == ["/svc/a/password"]
    page = ssm.get_parameters_by_path(Path="/svc", Recursive=True, MaxResults=2)
    assert len(page["Parameters"]) == 2 and page["NextToken"]
    described = ssm.describe_parameters(ParameterFilters=[{"Key": "tag:team", "Values": ["core"]}])["Parameters"]
    assert [(d["Name"], d["Type"], d["Description"]) for d in described] == [("/svc/a/password", "SecureString", "pw")]
    names = [d["Name"] for d in ssm.describe_parameters(ParameterFilters=[
        {"Key": "Path", "Option": "Recursive", "Values": ["/svc/b"]}])["Parameters"]]
    assert names == ["/svc/b/deep/flag"]
    got = ssm.get_parameters(Names=["/svc/a/hosts", "/svc/none"])
    assert [p["Name"] for p in got["Parameters"]] == ["/svc/a/hosts"] and got["InvalidParameters"] == ["/svc/none"]
    ssm.add_tags_to_resource(ResourceType="Parameter", ResourceId="/svc/a/hosts", Tags=[{"Key": "k", "Value": "v"}])
    assert ssm.list_tags_for_resource(ResourceType="Parameter", ResourceId="/svc/a/hosts")["TagList"] == [{"Key": "k", "Value": "v"}]
    ssm.remove_tags_from_resource(ResourceType="Parameter", ResourceId="/svc/a/hosts", TagKeys=["k"])
    assert code(ssm.list_tags_for_resource, ResourceType="Document", ResourceId="x")[0] == "InvalidResourceType"
    out = ssm.delete_parameters(Names=["/svc/a/hosts", "/svc/none"])
    assert (out["DeletedParameters"], out["InvalidParameters"]) == (["/svc/a/hosts"], ["/svc/none"])
    ssm.delete_parameter(Name="/svc/b/deep/flag")
    assert code(ssm.delete_parameter, Name="/svc/b/deep/flag")[0] == "ParameterNotFound"


def test_bad_requests_get_aws_errors(ssm):
    assert code(ssm.put_parameter, Name="aws-reserved", Value="x", Type="String")[0] == "ValidationException"
    assert code(ssm.put_parameter, Name="no/leading", Value="x", Type="String")[0] == "ValidationException"
    assert code(ssm.put_parameter, Name="/x" * 16, Value="x", Type="String")[0] == "HierarchyLevelLimitExceededException"
    assert code(ssm.put_parameter, Name="/big", Value="x" * 4097, Type="String")[0] == "ValidationException"
    assert ssm.put_parameter(Name="/big", Value="x" * 4097, Type="String", Tier="Advanced")["Tier"] == "Advanced"
    assert code(ssm.put_parameter, Name="/notype", Value="x")[0] == "ValidationException"
    assert code(ssm.put_parameter, Name="/pat", Value="abc", Type="String", AllowedPattern="^[0-9]+$")[0] == \
        "ParameterPatternMismatchException"
    ssm.put_parameter(Name="/pat", Value="123", Type="String", AllowedPattern="^[0-9]+$")
    # The pattern stays with the parameter.
    assert code(ssm.put_parameter, Name="/pat", Value="x", Overwrite=True)[0] == "ParameterPatternMismatchException"
    assert code(ssm.get_parameters_by_path, Path="relative")[0] == "ValidationException"
    assert code(ssm.describe_instance_information)[0] == "UnknownOperationException"


def test_the_cli_and_no_plaintext_on_disk(gantry):
    gantry.aws("ssm", "put-parameter", "--name", "/cli/secret", "--value", HIDDEN, "--type", "SecureString")
    got, _ = gantry.aws("ssm", "get-parameter", "--name", "/cli/secret", "--with-decryption")
    assert got["Parameter"]["Value"] == HIDDEN
    assert files_holding(os.path.join(gantry.dir, "data"), HIDDEN.encode()) == []
