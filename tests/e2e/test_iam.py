"""IAM users, access keys and inline policies with boto3 and awscli unchanged, STS
GetCallerIdentity, and every API call authorised by the caller's policies: the bootstrap key
is the account's root; a user's key may do what its policies allow, explicit Deny first, and
is refused otherwise with AccessDenied in each service's own error shape and IAM's words."""
import json

import boto3
import botocore.config
import botocore.exceptions
import pytest

from conftest import ACCOUNT, ECS_TASKS_TRUST, NETWORK, REGION, register


@pytest.fixture
def iam(gantry):
    return gantry.client("iam")


def code(call, *args, **kw):
    with pytest.raises(botocore.exceptions.ClientError) as e:
        call(*args, **kw)
    return e.value.response["Error"]["Code"], e.value.response["Error"]["Message"]


def as_user(gantry, key, service):
    return boto3.client(service, endpoint_url=gantry.endpoint, region_name=REGION,
                        aws_access_key_id=key["AccessKeyId"], aws_secret_access_key=key["SecretAccessKey"],
                        config=botocore.config.Config(retries={"max_attempts": 1}))


ALLOW_READS = {"Version": "2012-10-17", "Statement": [
    {"Effect": "Allow", "Action": ["ecs:List*", "ecs:Describe*", "sts:GetCallerIdentity"], "Resource": "*"}]}


def test_users_keys_and_policies_decide_every_call(gantry, iam):
    root = gantry.client("sts").get_caller_identity()
    assert (root["Account"], root["Arn"], root["UserId"]) == (ACCOUNT, f"arn:aws:iam::{ACCOUNT}:root", ACCOUNT)
    user = iam.create_user(UserName="ann", Path="/team/", Tags=[{"Key": "team", "Value": "web"}])["User"]
    assert user["Arn"] == f"arn:aws:iam::{ACCOUNT}:user/team/ann" and user["UserId"].startswith("AIDA")
    assert code(iam.create_user, UserName="ANN")[0] == "EntityAlreadyExists"
    key = iam.create_access_key(UserName="ann")["AccessKey"]
    assert key["AccessKeyId"].startswith("AKIA") and len(key["SecretAccessKey"]) == 40 and key["Status"] == "Active"
    ecs = as_user(gantry, key, "ecs")

    # No policy: nothing is allowed, in ECS's JSON shape and IAM's words.
    c, m = code(ecs.list_clusters)
    assert c == "AccessDeniedException"
    assert m == (f"User: arn:aws:iam::{ACCOUNT}:user/team/ann is not authorized to perform: ecs:ListClusters "
                 "on resource: * because no identity-based policy allows the ecs:ListClusters action")
    # A Query service answers AccessDenied in its XML shape.
    assert code(as_user(gantry, key, "elbv2").describe_load_balancers)[0] == "AccessDenied"

    iam.put_user_policy(UserName="ann", PolicyName="reads", PolicyDocument=json.dumps(ALLOW_READS))
    assert iam.get_user_policy(UserName="ann", PolicyName="reads")["PolicyDocument"] == ALLOW_READS
    assert iam.list_user_policies(UserName="ann")["PolicyNames"] == ["reads"]
    ecs.list_clusters()
    me = as_user(gantry, key, "sts").get_caller_identity()
    assert (me["Arn"], me["UserId"]) == (user["Arn"], user["UserId"])
    assert code(ecs.create_cluster, clusterName="nope")[0] == "AccessDeniedException"
    assert code(as_user(gantry, key, "iam").create_user, UserName="eve")[0] == "AccessDenied"
    # An explicit Deny wins over the Allow.
    deny = {"Statement": [{"Effect": "Deny", "Action": "ecs:ListClusters", "Resource": "*"}]}
    iam.put_user_policy(UserName="ann", PolicyName="no-list", PolicyDocument=json.dumps(deny))
    c, m = code(ecs.list_clusters)
    assert c == "AccessDeniedException" and m.endswith("with an explicit deny in an identity-based policy")
    ecs.describe_clusters(clusters=["default"])
    iam.delete_user_policy(UserName="ann", PolicyName="no-list")
    ecs.list_clusters()

    # An inactive key signs nothing; active again, it works.
    iam.update_access_key(UserName="ann", AccessKeyId=key["AccessKeyId"], Status="Inactive")
    assert code(ecs.list_clusters)[0] == "UnrecognizedClientException"
    iam.update_access_key(UserName="ann", AccessKeyId=key["AccessKeyId"], Status="Active")
    ecs.list_clusters()
    listed = iam.list_access_keys(UserName="ann")["AccessKeyMetadata"]
    assert [(k["AccessKeyId"], k["Status"]) for k in listed] == [(key["AccessKeyId"], "Active")]


def test_iam_refuses_what_iam_refuses(gantry, iam):
    iam.create_user(UserName="bob")
    bad = {"Statement": [{"Effect": "Allow", "Action": "ecs:*"}]}
    assert code(iam.put_user_policy, UserName="bob", PolicyName="p", PolicyDocument=json.dumps(bad)) == \
        ("MalformedPolicyDocument", "Policy statement must contain resources.")
    assert code(iam.put_user_policy, UserName="bob", PolicyName="p", PolicyDocument="{nope")[0] == "MalformedPolicyDocument"
    assert code(iam.put_user_policy, UserName="nobody", PolicyName="p",
                PolicyDocument=json.dumps(ALLOW_READS))[0] == "NoSuchEntity"
    assert code(iam.get_user, UserName="nobody") == ("NoSuchEntity", "The user with name nobody cannot be found.")
    assert code(iam.create_user, UserName="bad name")[0] == "ValidationError"
    iam.create_access_key(UserName="bob")
    iam.create_access_key(UserName="bob")
    assert code(iam.create_access_key, UserName="bob") == ("LimitExceeded", "Cannot exceed quota for AccessKeysPerUser: 2")
    c, m = code(iam.delete_user, UserName="bob")
    assert c == "DeleteConflict" and "access keys" in m
    for k in iam.list_access_keys(UserName="bob")["AccessKeyMetadata"]:
        iam.delete_access_key(UserName="bob", AccessKeyId=k["AccessKeyId"])
    iam.delete_user(UserName="bob")
    assert "bob" not in [u["UserName"] for u in iam.list_users()["Users"]]
    assert code(iam.create_instance_profile, InstanceProfileName="p")[0] == "UnknownOperationException"


def test_the_cli_speaks_iam_and_sts(gantry):
    out, _ = gantry.aws("iam", "create-user", "--user-name", "cli-user")
    assert out["User"]["UserName"] == "cli-user"
    users, _ = gantry.aws("iam", "list-users")
    assert "cli-user" in [u["UserName"] for u in users["Users"]]
    me, _ = gantry.aws("sts", "get-caller-identity")
    assert me["Arn"] == f"arn:aws:iam::{ACCOUNT}:root"


def test_roles_are_assumed_as_their_trust_policies_allow(gantry, iam):
    trust = {"Version": "2012-10-17", "Statement": [
        {"Effect": "Allow", "Principal": {"AWS": ACCOUNT}, "Action": "sts:AssumeRole"}]}
    role = iam.create_role(RoleName="app", AssumeRolePolicyDocument=json.dumps(trust), Description="the app")["Role"]
    assert role["Arn"] == f"arn:aws:iam::{ACCOUNT}:role/app" and role["RoleId"].startswith("AROA")
    assert iam.get_role(RoleName="app")["Role"]["AssumeRolePolicyDocument"] == trust
    iam.put_role_policy(RoleName="app", PolicyName="reads", PolicyDocument=json.dumps(ALLOW_READS))
    assert iam.list_role_policies(RoleName="app")["PolicyNames"] == ["reads"]

    sts = gantry.client("sts")
    out = sts.assume_role(RoleArn=role["Arn"], RoleSessionName="s1", DurationSeconds=900)
    creds = out["Credentials"]
    assert creds["AccessKeyId"].startswith("ASIA") and creds["SessionToken"]
    assert out["AssumedRoleUser"]["Arn"] == f"arn:aws:sts::{ACCOUNT}:assumed-role/app/s1"
    session = boto3.Session(aws_access_key_id=creds["AccessKeyId"], aws_secret_access_key=creds["SecretAccessKey"],
                            aws_session_token=creds["SessionToken"], region_name=REGION)
    cfg = botocore.config.Config(retries={"max_attempts": 1})
    me = session.client("sts", endpoint_url=gantry.endpoint, config=cfg).get_caller_identity()
    assert me["Arn"] == f"arn:aws:sts::{ACCOUNT}:assumed-role/app/s1" and me["UserId"] == f"{role['RoleId']}:s1"
    ecs = session.client("ecs", endpoint_url=gantry.endpoint, config=cfg)
    ecs.list_clusters()
    c, m = code(ecs.create_cluster, clusterName="nope")
    assert c == "AccessDeniedException" and m.startswith(f"User: arn:aws:sts::{ACCOUNT}:assumed-role/app/s1 is not authorized")
    # Without the session token the key does not verify.
    bare = boto3.client("ecs", endpoint_url=gantry.endpoint, region_name=REGION, config=cfg,
                        aws_access_key_id=creds["AccessKeyId"], aws_secret_access_key=creds["SecretAccessKey"])
    assert code(bare.list_clusters)[0] in ("UnrecognizedClientException", "InvalidSignatureException")

    # A user may assume it only if its own policies allow sts:AssumeRole too.
    iam.create_user(UserName="carl")
    key = iam.create_access_key(UserName="carl")["AccessKey"]
    carl = as_user(gantry, key, "sts")
    assert code(carl.assume_role, RoleArn=role["Arn"], RoleSessionName="c1")[0] == "AccessDenied"
    iam.put_user_policy(UserName="carl", PolicyName="assume", PolicyDocument=json.dumps(
        {"Statement": [{"Effect": "Allow", "Action": "sts:AssumeRole", "Resource": role["Arn"]}]}))
    assert carl.assume_role(RoleArn=role["Arn"], RoleSessionName="c1")["AssumedRoleUser"]["Arn"].endswith("/app/c1")

    # A role that trusts another account only is refused; bad durations and names are refused.
    other = {"Statement": [{"Effect": "Allow", "Principal": {"AWS": "arn:aws:iam::999999999999:root"},
                            "Action": "sts:AssumeRole"}]}
    locked = iam.create_role(RoleName="locked", AssumeRolePolicyDocument=json.dumps(other))["Role"]
    c, m = code(sts.assume_role, RoleArn=locked["Arn"], RoleSessionName="x1")
    assert c == "AccessDenied" and "sts:AssumeRole" in m
    assert code(sts.assume_role, RoleArn=role["Arn"], RoleSessionName="s1", DurationSeconds=7200)[0] == "ValidationError"
    assert code(sts.assume_role, RoleArn=f"arn:aws:iam::{ACCOUNT}:role/none", RoleSessionName="s1")[0] == "AccessDenied"
    assert code(iam.create_role, RoleName="bad", AssumeRolePolicyDocument=json.dumps(ALLOW_READS))[0] == \
        "MalformedPolicyDocument"
    assert code(iam.delete_role, RoleName="app")[0] == "DeleteConflict"
    iam.delete_role_policy(RoleName="app", PolicyName="reads")
    iam.delete_role(RoleName="app")
    names = [r["RoleName"] for r in iam.list_roles()["Roles"]]
    assert "app" not in names and "locked" in names, names


def test_session_policies_bound_what_a_role_session_may_do(gantry, iam):
    """AssumeRole's Policy and PolicyArns: the session may do only what both the role's
    policies and the session policies allow, and an explicit deny in either refuses."""
    trust = {"Statement": [{"Effect": "Allow", "Principal": {"AWS": ACCOUNT}, "Action": "sts:AssumeRole"}]}
    role = iam.create_role(RoleName="bounded", AssumeRolePolicyDocument=json.dumps(trust))["Role"]
    broad = {"Statement": [{"Effect": "Allow", "Action": ["ecs:*", "logs:Describe*"], "Resource": "*"}]}
    iam.put_role_policy(RoleName="bounded", PolicyName="broad", PolicyDocument=json.dumps(broad))
    only_describe = {"Statement": [
        {"Effect": "Allow", "Action": ["ecs:Describe*", "ecs:ListClusters", "sqs:*"], "Resource": "*"},
        {"Effect": "Deny", "Action": "ecs:DescribeServices", "Resource": "*"}]}
    managed = iam.create_policy(PolicyName="session-logs", PolicyDocument=json.dumps(
        {"Statement": [{"Effect": "Allow", "Action": "logs:DescribeLogGroups", "Resource": "*"}]}))["Policy"]["Arn"]
    sts = gantry.client("sts")
    out = sts.assume_role(RoleArn=role["Arn"], RoleSessionName="narrow", Policy=json.dumps(only_describe),
                          PolicyArns=[{"arn": managed}])
    assert 0 < out["PackedPolicySize"] <= 100, out
    creds = out["Credentials"]
    session = boto3.Session(aws_access_key_id=creds["AccessKeyId"], aws_secret_access_key=creds["SecretAccessKey"],
                            aws_session_token=creds["SessionToken"], region_name=REGION)
    cfg = botocore.config.Config(retries={"max_attempts": 1})
    ecs = session.client("ecs", endpoint_url=gantry.endpoint, config=cfg)
    logs = session.client("logs", endpoint_url=gantry.endpoint, config=cfg)
    ecs.list_clusters()
    logs.describe_log_groups()  # allowed by the managed session policy and the role
    # The role allows it, the session policies do not.
    c, m = code(ecs.create_cluster, clusterName="nope")
    assert c == "AccessDeniedException"
    assert m.endswith("because no session policy allows the ecs:CreateCluster action"), m
    # A session policy's explicit deny refuses what the role allows.
    c, m = code(ecs.describe_services, cluster="default", services=["x"])
    assert m.endswith("with an explicit deny in a session policy"), m
    # A session policy never grants more than the role: the role allows no sqs, nor ssm.
    c, m = code(session.client("ssm", endpoint_url=gantry.endpoint, config=cfg).get_parameter, Name="/x")
    assert m.endswith("because no identity-based policy allows the ssm:GetParameter action"), m

    # Malformed, oversized and unknown session policies are refused.
    assert code(sts.assume_role, RoleArn=role["Arn"], RoleSessionName="bad", Policy="{")[0] == "MalformedPolicyDocument"
    big = {"Statement": [{"Effect": "Allow", "Action": "ecs:ListClusters", "Resource": "*", "Sid": "x" * 2100}]}
    assert code(sts.assume_role, RoleArn=role["Arn"], RoleSessionName="big", Policy=json.dumps(big))[0] in (
        "PackedPolicyTooLarge", "ValidationError")
    c, m = code(sts.assume_role, RoleArn=role["Arn"], RoleSessionName="gone",
                PolicyArns=[{"arn": f"arn:aws:iam::{ACCOUNT}:policy/none"}])
    assert c == "InvalidParameterValue" and "policy/none" in m, (c, m)
    many = [{"arn": managed}] * 11
    assert code(sts.assume_role, RoleArn=role["Arn"], RoleSessionName="many", PolicyArns=many)[0] == "ValidationError"
    iam.delete_role_policy(RoleName="bounded", PolicyName="broad")
    iam.delete_role(RoleName="bounded")


def test_role_chaining_carries_transitive_tags_and_the_source_identity(gantry, iam):
    """A session's TransitiveTagKeys and SourceIdentity go with it into the roles it assumes:
    inherited, never overridden or changed, and visible to policies as aws:PrincipalTag and
    aws:SourceIdentity."""
    def trust(*actions):
        return json.dumps({"Statement": [{"Effect": "Allow", "Principal": {"AWS": ACCOUNT}, "Action": list(actions)}]})
    every = ("sts:AssumeRole", "sts:TagSession", "sts:SetSourceIdentity")
    first = iam.create_role(RoleName="chain-first", AssumeRolePolicyDocument=trust(*every))["Role"]["Arn"]
    second = iam.create_role(RoleName="chain-second", AssumeRolePolicyDocument=trust(*every))["Role"]["Arn"]
    plain = iam.create_role(RoleName="chain-plain", AssumeRolePolicyDocument=trust("sts:AssumeRole"))["Role"]["Arn"]
    iam.put_role_policy(RoleName="chain-first", PolicyName="chain", PolicyDocument=json.dumps(
        {"Statement": [{"Effect": "Allow", "Action": ["sts:AssumeRole", "sts:TagSession", "sts:SetSourceIdentity"],
                        "Resource": "*"}]}))
    iam.put_role_policy(RoleName="chain-second", PolicyName="ask", PolicyDocument=json.dumps({"Statement": [
        {"Effect": "Allow", "Action": ["ecs:ListClusters", "ecs:DescribeClusters"], "Resource": "*",
         "Condition": {"StringEquals": {"aws:PrincipalTag/team": "web", "aws:SourceIdentity": "ann"}}},
        {"Effect": "Deny", "Action": "ecs:DescribeClusters", "Resource": "*",
         "Condition": {"Null": {"aws:PrincipalTag/env": "false"}}}]}))
    sts = gantry.client("sts")
    out = sts.assume_role(RoleArn=first, RoleSessionName="one", SourceIdentity="ann",
                          Tags=[{"Key": "team", "Value": "web"}, {"Key": "env", "Value": "dev"}],
                          TransitiveTagKeys=["team"])
    assert out["SourceIdentity"] == "ann"

    def as_session(creds, service):
        return boto3.client(service, endpoint_url=gantry.endpoint, region_name=REGION,
                            aws_access_key_id=creds["AccessKeyId"], aws_secret_access_key=creds["SecretAccessKey"],
                            aws_session_token=creds["SessionToken"],
                            config=botocore.config.Config(retries={"max_attempts": 1}))
    one = as_session(out["Credentials"], "sts")
    out2 = one.assume_role(RoleArn=second, RoleSessionName="two")
    assert out2["SourceIdentity"] == "ann"
    ecs = as_session(out2["Credentials"], "ecs")
    ecs.list_clusters()  # team=web came along, and the source identity
    ecs.describe_clusters(clusters=["default"])  # env did not (it was not transitive)
    # The chain may not override a transitive tag, nor change the source identity.
    assert code(one.assume_role, RoleArn=second, RoleSessionName="two",
                Tags=[{"Key": "team", "Value": "ops"}])[0] == "InvalidParameterValue"
    assert code(one.assume_role, RoleArn=second, RoleSessionName="two", SourceIdentity="eve")[0] == "AccessDenied"
    # A role whose trust policy does not allow sts:SetSourceIdentity (nor sts:TagSession) is
    # not assumed with an inherited source identity.
    c, m = code(one.assume_role, RoleArn=plain, RoleSessionName="three")
    assert c == "AccessDenied", (c, m)
    assert code(sts.assume_role, RoleArn=first, RoleSessionName="xx", Tags=[{"Key": "a", "Value": "b"}],
                TransitiveTagKeys=["nope"])[0] == "InvalidParameterValue"
    assert code(sts.assume_role, RoleArn=first, RoleSessionName="xx", SourceIdentity="aws:me")[0] == "ValidationError"
    for role, policy in (("chain-first", "chain"), ("chain-second", "ask")):
        iam.delete_role_policy(RoleName=role, PolicyName=policy)
    for role in ("chain-first", "chain-second", "chain-plain"):
        iam.delete_role(RoleName=role)


def test_policies_scoped_to_an_arn_apply_where_the_request_names_it(gantry, iam):
    gantry.client("ssm").put_parameter(Name="/team/x", Value="v", Type="String")
    gantry.client("ssm").put_parameter(Name="/other/y", Value="w", Type="String")
    secret = gantry.client("secretsmanager").create_secret(Name="team/db", SecretString="s")["ARN"]
    gantry.client("secretsmanager").create_secret(Name="other/db", SecretString="t")
    iam.create_user(UserName="dana")
    key = iam.create_access_key(UserName="dana")["AccessKey"]
    arn = f"arn:aws:ssm:{REGION}:{ACCOUNT}:parameter/team/*"
    iam.put_user_policy(UserName="dana", PolicyName="team", PolicyDocument=json.dumps(
        {"Statement": [{"Effect": "Allow", "Action": ["ssm:GetParameter", "ssm:GetParameters"], "Resource": arn},
                       {"Effect": "Allow", "Action": "secretsmanager:GetSecretValue",
                        "Resource": f"arn:aws:secretsmanager:{REGION}:{ACCOUNT}:secret:team/db-??????"}]}))
    ssm = as_user(gantry, key, "ssm")
    by_arn = f"arn:aws:ssm:{REGION}:{ACCOUNT}:parameter/team/x"
    assert ssm.get_parameter(Name=by_arn)["Parameter"]["Value"] == "v"
    # By name, with a version selector, and in a list: the parameter's ARN is what is checked.
    assert ssm.get_parameter(Name="/team/x")["Parameter"]["Value"] == "v"
    assert ssm.get_parameter(Name="/team/x:1")["Parameter"]["Value"] == "v"
    c, m = code(ssm.get_parameter, Name="/other/y")
    assert c == "AccessDeniedException"
    assert f"on resource: arn:aws:ssm:{REGION}:{ACCOUNT}:parameter/other/y" in m, m
    assert len(ssm.get_parameters(Names=["/team/x"])["Parameters"]) == 1
    assert code(ssm.get_parameters, Names=["/team/x", "/other/y"])[0] == "AccessDeniedException"
    # A secret by name is checked against its full ARN, random suffix included.
    sm = as_user(gantry, key, "secretsmanager")
    assert sm.get_secret_value(SecretId="team/db")["SecretString"] == "s"
    assert sm.get_secret_value(SecretId=secret)["SecretString"] == "s"
    c, m = code(sm.get_secret_value, SecretId="other/db")
    assert c == "AccessDeniedException" and f":secret:other/db-" in m, m


def test_iam_logs_and_elbv2_requests_are_checked_against_what_they_name(gantry, iam):
    """IAM's users, roles (with their paths) and policies, log groups and streams, and ELBv2's
    resources are the ARNs policies scope to, named in AccessDenied as AWS names them."""
    me = f"arn:aws:iam::{ACCOUNT}:user/${{aws:username}}"
    policy = {"Statement": [
        {"Effect": "Allow", "Action": "iam:*", "Resource": [f"arn:aws:iam::{ACCOUNT}:role/app/*", me]},
        {"Effect": "Deny", "Action": "iam:AttachRolePolicy", "Resource": "*",
         "Condition": {"ArnNotEquals": {"iam:PolicyARN": "arn:aws:iam::aws:policy/ReadOnlyAccess"}}},
        {"Effect": "Allow", "Action": "logs:*", "Resource": "arn:aws:logs:*:*:log-group:/scoped/*"},
        {"Effect": "Allow", "Action": "elasticloadbalancing:*",
         "Resource": "arn:aws:elasticloadbalancing:*:*:targetgroup/scoped-*"}]}
    iam.create_user(UserName="scoped")
    iam.put_user_policy(UserName="scoped", PolicyName="p", PolicyDocument=json.dumps(policy))
    iam.create_role(RoleName="outside", AssumeRolePolicyDocument=json.dumps(ECS_TASKS_TRUST))
    key = iam.create_access_key(UserName="scoped")["AccessKey"]
    as_scoped = as_user(gantry, key, "iam")

    # A new role's ARN carries the request's path; an existing one's, its own.
    as_scoped.create_role(RoleName="in-app", Path="/app/", AssumeRolePolicyDocument=json.dumps(ECS_TASKS_TRUST))
    as_scoped.put_role_policy(RoleName="in-app", PolicyName="x", PolicyDocument=json.dumps(ALLOW_READS))
    c, m = code(as_scoped.put_role_policy, RoleName="outside", PolicyName="x", PolicyDocument=json.dumps(ALLOW_READS))
    assert c == "AccessDenied" and f"iam:PutRolePolicy on resource: arn:aws:iam::{ACCOUNT}:role/outside " in m, m
    c, m = code(as_scoped.create_role, RoleName="not-app", AssumeRolePolicyDocument=json.dumps(ECS_TASKS_TRUST))
    assert f"on resource: arn:aws:iam::{ACCOUNT}:role/not-app " in m, m
    # iam:PolicyARN decides which managed policy may be attached.
    as_scoped.attach_role_policy(RoleName="in-app", PolicyArn="arn:aws:iam::aws:policy/ReadOnlyAccess")
    c, m = code(as_scoped.attach_role_policy, RoleName="in-app", PolicyArn="arn:aws:iam::aws:policy/AdministratorAccess")
    assert c == "AccessDenied" and m.endswith("with an explicit deny in an identity-based policy"), m
    # Without UserName a user acts on itself: ${aws:username} lets it manage its own keys only.
    own = as_scoped.create_access_key()["AccessKey"]
    assert own["UserName"] == "scoped"
    as_scoped.delete_access_key(AccessKeyId=own["AccessKeyId"])
    c, m = code(as_scoped.create_access_key, UserName="ann")
    assert f"on resource: arn:aws:iam::{ACCOUNT}:user/team/ann " in m, m
    assert code(as_scoped.list_roles)[0] == "AccessDenied"

    logs = as_user(gantry, key, "logs")
    logs.create_log_group(logGroupName="/scoped/a")
    logs.create_log_stream(logGroupName="/scoped/a", logStreamName="s")
    logs.put_log_events(logGroupName="/scoped/a", logStreamName="s", logEvents=[{"timestamp": 1, "message": "m"}])
    c, m = code(logs.create_log_group, logGroupName="/other")
    assert c == "AccessDeniedException"
    assert f"logs:CreateLogGroup on resource: arn:aws:logs:{REGION}:{ACCOUNT}:log-group:/other:log-stream: " in m, m
    c, m = code(logs.describe_log_groups)
    assert f"on resource: arn:aws:logs:{REGION}:{ACCOUNT}:log-group::log-stream: " in m, m

    elbv2 = as_user(gantry, key, "elbv2")
    vpc = gantry.client("ec2").describe_vpcs()["Vpcs"][0]["VpcId"]
    tg = elbv2.create_target_group(Name="scoped-tg", Protocol="HTTP", Port=80, VpcId=vpc,
                                   TargetType="ip")["TargetGroups"][0]["TargetGroupArn"]
    c, m = code(elbv2.create_target_group, Name="other-tg", Protocol="HTTP", Port=80, VpcId=vpc, TargetType="ip")
    assert c == "AccessDenied"
    assert f"on resource: arn:aws:elasticloadbalancing:{REGION}:{ACCOUNT}:targetgroup/other-tg/* " in m, m
    # Describe* supports no resource-level permission: it is asked about "*".
    assert "on resource: * " in code(elbv2.describe_target_groups)[1]
    elbv2.delete_target_group(TargetGroupArn=tg)

    gantry.client("logs").delete_log_group(logGroupName="/scoped/a")
    iam.detach_role_policy(RoleName="in-app", PolicyArn="arn:aws:iam::aws:policy/ReadOnlyAccess")
    iam.delete_role_policy(RoleName="in-app", PolicyName="x")
    for role in ("in-app", "outside"):
        iam.delete_role(RoleName=role)


def test_handing_a_role_to_tasks_needs_pass_role(gantry, iam):
    from conftest import IMAGE
    role = f"arn:aws:iam::{ACCOUNT}:role/task-role"
    iam.create_user(UserName="erin")
    key = iam.create_access_key(UserName="erin")["AccessKey"]
    iam.put_user_policy(UserName="erin", PolicyName="ecs", PolicyDocument=json.dumps(
        {"Statement": [{"Effect": "Allow", "Action": "ecs:*", "Resource": "*"}]}))
    ecs = as_user(gantry, key, "ecs")
    td = dict(family="with-role", networkMode="awsvpc", requiresCompatibilities=["FARGATE"], cpu="256", memory="512",
              containerDefinitions=[{"name": "app", "image": IMAGE}])
    ecs.register_task_definition(**td)  # no role: no PassRole needed
    c, m = code(ecs.register_task_definition, taskRoleArn=role, **td)
    assert c == "AccessDeniedException" and m == (
        f"User: arn:aws:iam::{ACCOUNT}:user/erin is not authorized to perform: iam:PassRole on resource: {role} "
        "because no identity-based policy allows the iam:PassRole action")
    iam.put_user_policy(UserName="erin", PolicyName="pass", PolicyDocument=json.dumps(
        {"Statement": [{"Effect": "Allow", "Action": "iam:PassRole", "Resource": role,
                        "Condition": {"StringEquals": {"iam:PassedToService": "ecs-tasks.amazonaws.com"}}}]}))
    out = ecs.register_task_definition(taskRoleArn=role, **td)["taskDefinition"]
    assert out["taskRoleArn"] == role
    # Another role is still refused; the root passes any.
    assert code(ecs.register_task_definition, executionRoleArn=f"arn:aws:iam::{ACCOUNT}:role/other", **td)[0] == \
        "AccessDeniedException"
    gantry.client("ecs").register_task_definition(executionRoleArn=f"arn:aws:iam::{ACCOUNT}:role/other", **td)


def test_ecs_policies_scope_to_clusters_task_definitions_and_request_tags(gantry, iam):
    from conftest import NETWORK, register
    root = gantry.client("ecs")
    for name in ("team-a", "team-b"):
        root.create_cluster(clusterName=name)
    register(root, "app", [{"name": "c", "command": ["true"]}])
    register(root, "other", [{"name": "c", "command": ["true"]}])
    arn = lambda r: f"arn:aws:ecs:{REGION}:{ACCOUNT}:{r}"  # noqa: E731
    iam.create_user(UserName="frank")
    key = iam.create_access_key(UserName="frank")["AccessKey"]
    iam.put_user_policy(UserName="frank", PolicyName="team-a", PolicyDocument=json.dumps({"Statement": [
        {"Effect": "Allow", "Action": "ecs:RunTask", "Resource": arn("task-definition/app:*"),
         "Condition": {"ArnEquals": {"ecs:cluster": arn("cluster/team-a")}}},
        {"Effect": "Allow", "Action": ["ecs:DescribeTasks", "ecs:StopTask"], "Resource": arn("task/team-a/*")},
        {"Effect": "Allow", "Action": "ecs:CreateCluster", "Resource": "*",
         "Condition": {"StringEquals": {"aws:RequestTag/team": "a"},
                       "ForAllValues:StringEquals": {"aws:TagKeys": ["team"]}}}]}))
    ecs = as_user(gantry, key, "ecs")
    run = dict(taskDefinition="app", launchType="FARGATE", networkConfiguration=NETWORK)
    # The family alone is its latest revision, as ECS resolves it before asking IAM.
    task = ecs.run_task(cluster="team-a", **run)["tasks"][0]
    c, m = code(ecs.run_task, cluster="team-b", **run)
    assert c == "AccessDeniedException" and f"on resource: {arn('task-definition/app:1')}" in m, m
    assert code(ecs.run_task, cluster="team-a", **dict(run, taskDefinition="other"))[0] == "AccessDeniedException"
    assert ecs.describe_tasks(cluster="team-a", tasks=[task["taskArn"]])["tasks"][0]["taskArn"] == task["taskArn"]
    c, m = code(ecs.describe_tasks, cluster="team-b", tasks=[task["taskArn"].rsplit("/", 1)[1]])
    assert c == "AccessDeniedException" and f"on resource: {arn('task/team-b/')}" in m, m
    ecs.stop_task(cluster="team-a", task=task["taskArn"])
    # Request tags decide what may be created.
    ecs.create_cluster(clusterName="team-a-2", tags=[{"key": "team", "value": "a"}])
    for tags in ([], [{"key": "team", "value": "b"}], [{"key": "team", "value": "a"}, {"key": "cost", "value": "x"}]):
        assert code(ecs.create_cluster, clusterName="team-x", tags=tags)[0] == "AccessDeniedException", tags


def test_managed_policies_their_versions_and_attachments(gantry, iam):
    read = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "ecs:ListClusters", "Resource": "*"}]}
    more = {"Version": "2012-10-17", "Statement": [
        {"Effect": "Allow", "Action": ["ecs:ListClusters", "ecs:CreateCluster"], "Resource": "*"}]}
    p = iam.create_policy(PolicyName="ecs-read", PolicyDocument=json.dumps(read), Description="reads")["Policy"]
    arn = p["Arn"]
    assert arn == f"arn:aws:iam::{ACCOUNT}:policy/ecs-read" and p["DefaultVersionId"] == "v1" and p["PolicyId"].startswith("ANPA")
    assert code(iam.create_policy, PolicyName="ecs-read", PolicyDocument=json.dumps(read))[0] == "EntityAlreadyExists"
    iam.create_user(UserName="gina")
    key = iam.create_access_key(UserName="gina")["AccessKey"]
    ecs = as_user(gantry, key, "ecs")
    assert code(ecs.list_clusters)[0] == "AccessDeniedException"
    iam.attach_user_policy(UserName="gina", PolicyArn=arn)
    assert iam.list_attached_user_policies(UserName="gina")["AttachedPolicies"] == [
        {"PolicyName": "ecs-read", "PolicyArn": arn}]
    assert iam.get_policy(PolicyArn=arn)["Policy"]["AttachmentCount"] == 1
    ecs.list_clusters()
    assert code(ecs.create_cluster, clusterName="gina")[0] == "AccessDeniedException"
    # A new default version applies at once; the old one is still there to go back to.
    v2 = iam.create_policy_version(PolicyArn=arn, PolicyDocument=json.dumps(more), SetAsDefault=True)["PolicyVersion"]
    assert v2["VersionId"] == "v2" and v2["IsDefaultVersion"]
    ecs.create_cluster(clusterName="gina")
    assert iam.get_policy_version(PolicyArn=arn, VersionId="v1")["PolicyVersion"]["Document"] == read
    versions = iam.list_policy_versions(PolicyArn=arn)["Versions"]
    assert [(v["VersionId"], v["IsDefaultVersion"]) for v in versions] == [("v2", True), ("v1", False)]
    assert code(iam.delete_policy_version, PolicyArn=arn, VersionId="v2")[0] == "DeleteConflict"
    iam.set_default_policy_version(PolicyArn=arn, VersionId="v1")
    assert code(ecs.create_cluster, clusterName="gina2")[0] == "AccessDeniedException"
    # Attached, or with versions left: not deleted. Nor is a user with policies attached.
    assert code(iam.delete_policy, PolicyArn=arn)[0] == "DeleteConflict"
    assert code(iam.delete_user, UserName="gina")[0] == "DeleteConflict"
    # AWS's own policies are there to attach, not to change.
    aws = iam.list_policies(Scope="AWS")["Policies"]
    assert "AmazonECSTaskExecutionRolePolicy" in [x["PolicyName"] for x in aws]
    admin = "arn:aws:iam::aws:policy/AdministratorAccess"
    iam.attach_user_policy(UserName="gina", PolicyArn=admin)
    ecs.create_cluster(clusterName="gina3")
    assert code(iam.create_policy_version, PolicyArn=admin, PolicyDocument=json.dumps(read))[0] == "InvalidInput"
    for a in (admin, arn):
        iam.detach_user_policy(UserName="gina", PolicyArn=a)
    assert code(iam.detach_user_policy, UserName="gina", PolicyArn=arn)[0] == "NoSuchEntity"
    iam.delete_policy_version(PolicyArn=arn, VersionId="v2")
    iam.delete_policy(PolicyArn=arn)
    assert code(iam.get_policy, PolicyArn=arn)[0] == "NoSuchEntity"
    assert "ecs-read" not in [x["PolicyName"] for x in iam.list_policies(Scope="Local")["Policies"]]


def test_resource_tags_decide_where_policies_ask_about_them(gantry, iam):
    from conftest import NETWORK, register
    root, sm = gantry.client("ecs"), gantry.client("secretsmanager")
    root.create_cluster(clusterName="abac-a", tags=[{"key": "team", "value": "a"}])
    root.create_cluster(clusterName="abac-b", tags=[{"key": "team", "value": "b"}])
    mine = sm.create_secret(Name="abac/a", SecretString="for a", Tags=[{"Key": "team", "Value": "a"}])["ARN"]
    theirs = sm.create_secret(Name="abac/b", SecretString="for b", Tags=[{"Key": "team", "Value": "b"}])["ARN"]
    iam.create_user(UserName="hana")
    key = iam.create_access_key(UserName="hana")["AccessKey"]
    team_a = {"StringEquals": {"aws:ResourceTag/team": "a"}}
    iam.put_user_policy(UserName="hana", PolicyName="abac", PolicyDocument=json.dumps({"Statement": [
        {"Effect": "Allow", "Action": ["ecs:DescribeClusters", "ecs:DeleteCluster"], "Resource": "*", "Condition": team_a},
        {"Effect": "Allow", "Action": "secretsmanager:GetSecretValue", "Resource": "*", "Condition": team_a}]}))
    ecs, hsm = as_user(gantry, key, "ecs"), as_user(gantry, key, "secretsmanager")
    assert ecs.describe_clusters(clusters=["abac-a"])["clusters"][0]["clusterName"] == "abac-a"
    assert code(ecs.describe_clusters, clusters=["abac-b"])[0] == "AccessDeniedException"
    assert code(ecs.describe_clusters, clusters=["abac-a", "abac-b"])[0] == "AccessDeniedException"
    assert hsm.get_secret_value(SecretId="abac/a")["SecretString"] == "for a"
    assert hsm.get_secret_value(SecretId=mine)["SecretString"] == "for a"
    assert code(hsm.get_secret_value, SecretId=theirs)[0] == "AccessDeniedException"
    ecs.delete_cluster(cluster="abac-a")
    assert code(ecs.delete_cluster, cluster="abac-b")[0] == "AccessDeniedException"


def test_tags_of_users_roles_and_sessions_are_principal_tags(gantry, iam):
    cfg = botocore.config.Config(retries={"max_attempts": 1})
    by_tag = {"Statement": [{"Effect": "Allow", "Action": "ecs:ListClusters", "Resource": "*",
                             "Condition": {"StringEquals": {"aws:PrincipalTag/team": "web"}}}]}
    iam.create_user(UserName="tagged", Tags=[{"Key": "team", "Value": "db"}])
    iam.put_user_policy(UserName="tagged", PolicyName="by-tag", PolicyDocument=json.dumps(by_tag))
    ecs = as_user(gantry, iam.create_access_key(UserName="tagged")["AccessKey"], "ecs")
    assert code(ecs.list_clusters)[0] == "AccessDeniedException"
    iam.tag_user(UserName="tagged", Tags=[{"Key": "Team", "Value": "web"}, {"Key": "env", "Value": "prod"}])
    assert iam.list_user_tags(UserName="tagged")["Tags"] == [{"Key": "Team", "Value": "web"}, {"Key": "env", "Value": "prod"}]
    ecs.list_clusters()
    iam.untag_user(UserName="tagged", TagKeys=["team"])
    assert iam.list_user_tags(UserName="tagged")["Tags"] == [{"Key": "env", "Value": "prod"}]
    assert code(ecs.list_clusters)[0] == "AccessDeniedException"
    # As IAM refuses: a bad key, duplicate keys, more than 50, an unknown user.
    assert code(iam.tag_user, UserName="tagged", Tags=[{"Key": "a*b", "Value": "x"}])[0] == "InvalidInput"
    assert code(iam.tag_user, UserName="tagged", Tags=[{"Key": "k", "Value": "1"}, {"Key": "K", "Value": "2"}])[0] == \
        "InvalidInput"
    many = [{"Key": f"k{i}", "Value": "v"} for i in range(50)]
    assert code(iam.tag_user, UserName="tagged", Tags=many)[0] == "LimitExceeded"
    assert code(iam.tag_user, UserName="nobody", Tags=[{"Key": "k", "Value": "v"}])[0] == "NoSuchEntity"

    # Roles: tags as principal tags, and session tags over them (sts:TagSession in the trust).
    trust = {"Statement": [{"Effect": "Allow", "Principal": {"AWS": ACCOUNT}, "Action": "sts:AssumeRole"}]}
    role = iam.create_role(RoleName="by-tag", AssumeRolePolicyDocument=json.dumps(trust))["Role"]
    iam.put_role_policy(RoleName="by-tag", PolicyName="by-tag", PolicyDocument=json.dumps(by_tag))
    iam.tag_role(RoleName="by-tag", Tags=[{"Key": "team", "Value": "web"}])
    assert iam.list_role_tags(RoleName="by-tag")["Tags"] == [{"Key": "team", "Value": "web"}]
    sts = gantry.client("sts")

    def ecs_as(out):
        c = out["Credentials"]
        return boto3.client("ecs", endpoint_url=gantry.endpoint, region_name=REGION, config=cfg,
                            aws_access_key_id=c["AccessKeyId"], aws_secret_access_key=c["SecretAccessKey"],
                            aws_session_token=c["SessionToken"])
    ecs_as(sts.assume_role(RoleArn=role["Arn"], RoleSessionName="plain")).list_clusters()
    red = [{"Key": "team", "Value": "red"}]
    c, m = code(sts.assume_role, RoleArn=role["Arn"], RoleSessionName="red", Tags=red)
    assert c == "AccessDenied" and "sts:TagSession" in m, m
    trust["Statement"][0]["Action"] = ["sts:AssumeRole", "sts:TagSession"]
    iam.update_assume_role_policy(RoleName="by-tag", PolicyDocument=json.dumps(trust))
    red_session = ecs_as(sts.assume_role(RoleArn=role["Arn"], RoleSessionName="red", Tags=red))
    assert code(red_session.list_clusters)[0] == "AccessDeniedException", "the session tag overrides the role's"
    iam.untag_role(RoleName="by-tag", TagKeys=["team"])
    assert iam.list_role_tags(RoleName="by-tag")["Tags"] == []


def test_groups_give_their_members_their_policies(gantry, iam):
    group = iam.create_group(GroupName="deployers", Path="/ops/")["Group"]
    assert group["Arn"] == f"arn:aws:iam::{ACCOUNT}:group/ops/deployers" and group["GroupId"].startswith("AGPA")
    assert code(iam.create_group, GroupName="Deployers")[0] == "EntityAlreadyExists"
    iam.create_user(UserName="dora")
    dora_key = iam.create_access_key(UserName="dora")["AccessKey"]
    ecs = as_user(gantry, dora_key, "ecs")
    assert code(ecs.list_clusters)[0] == "AccessDeniedException"
    # An inline group policy, then an attached managed one, reach every member.
    iam.put_group_policy(GroupName="deployers", PolicyName="reads", PolicyDocument=json.dumps(ALLOW_READS))
    iam.add_user_to_group(GroupName="deployers", UserName="dora")
    ecs.list_clusters()
    assert [g["GroupName"] for g in iam.list_groups_for_user(UserName="dora")["Groups"]] == ["deployers"]
    got = iam.get_group(GroupName="deployers")
    assert [u["UserName"] for u in got["Users"]] == ["dora"] and got["Group"]["Path"] == "/ops/"
    assert iam.get_group_policy(GroupName="deployers", PolicyName="reads")["PolicyDocument"] == ALLOW_READS
    assert iam.list_group_policies(GroupName="deployers")["PolicyNames"] == ["reads"]
    assert code(ecs.create_cluster, clusterName="by-group")[0] == "AccessDeniedException"
    arn = iam.create_policy(PolicyName="make-clusters", PolicyDocument=json.dumps(
        {"Statement": [{"Effect": "Allow", "Action": "ecs:CreateCluster", "Resource": "*"}]}))["Policy"]["Arn"]
    iam.attach_group_policy(GroupName="deployers", PolicyArn=arn)
    assert iam.list_attached_group_policies(GroupName="deployers")["AttachedPolicies"] == [
        {"PolicyName": "make-clusters", "PolicyArn": arn}]
    ecs.create_cluster(clusterName="by-group")
    assert code(iam.delete_policy, PolicyArn=arn)[0] == "DeleteConflict", "a group holds it"
    # Neither the group nor the user goes while the other holds it; removal takes it all away.
    assert code(iam.delete_group, GroupName="deployers")[0] == "DeleteConflict"
    iam.delete_access_key(UserName="dora", AccessKeyId=dora_key["AccessKeyId"])
    assert code(iam.delete_user, UserName="dora")[0] == "DeleteConflict"
    iam.remove_user_from_group(GroupName="deployers", UserName="dora")
    assert code(iam.remove_user_from_group, GroupName="deployers", UserName="dora")[0] == "NoSuchEntity"
    assert iam.get_group(GroupName="deployers")["Users"] == []
    iam.detach_group_policy(GroupName="deployers", PolicyArn=arn)
    iam.delete_group_policy(GroupName="deployers", PolicyName="reads")
    iam.delete_group(GroupName="deployers")
    assert code(iam.get_group, GroupName="deployers")[0] == "NoSuchEntity"
    iam.delete_user(UserName="dora")
    gantry.client("ecs").delete_cluster(cluster="by-group")


def test_cloud_map_and_scaling_requests_are_checked_against_what_they_name(gantry, iam):
    """Cloud Map's namespaces and services and Application Auto Scaling's scalable targets are
    the ARNs policies scope to (the target's own ARN, drawn at its registration)."""
    sd, aas, ecs = gantry.client("servicediscovery"), gantry.client("application-autoscaling"), gantry.client("ecs")

    def namespace(name):
        op = sd.get_operation(OperationId=sd.create_http_namespace(Name=name)["OperationId"])["Operation"]
        return op["Targets"]["NAMESPACE"]
    mine, other = namespace("scoped-mine"), namespace("scoped-other")
    ecs.create_cluster(clusterName="scoped-scaling")
    register(ecs, "scoped-idle", [{"name": "app", "command": ["sleep", "3600"]}])
    for s in ("a", "b"):
        ecs.create_service(cluster="scoped-scaling", serviceName=s, taskDefinition="scoped-idle", desiredCount=0,
                           networkConfiguration=NETWORK, launchType="FARGATE")
        aas.register_scalable_target(ServiceNamespace="ecs", ResourceId=f"service/scoped-scaling/{s}",
                                     ScalableDimension="ecs:service:DesiredCount", MinCapacity=0, MaxCapacity=2)
    targets = {t["ResourceId"]: t["ScalableTargetARN"] for t in aas.describe_scalable_targets(
        ServiceNamespace="ecs", ResourceIds=["service/scoped-scaling/a", "service/scoped-scaling/b"])["ScalableTargets"]}
    target_a, target_b = targets["service/scoped-scaling/a"], targets["service/scoped-scaling/b"]
    policy = {"Statement": [
        {"Effect": "Allow", "Action": "servicediscovery:*",
         "Resource": f"arn:aws:servicediscovery:{REGION}:{ACCOUNT}:namespace/{mine}"},
        {"Effect": "Allow", "Action": "application-autoscaling:*", "Resource": target_a}]}
    iam.create_user(UserName="mapper")
    iam.put_user_policy(UserName="mapper", PolicyName="p", PolicyDocument=json.dumps(policy))
    key = iam.create_access_key(UserName="mapper")["AccessKey"]

    as_sd = as_user(gantry, key, "servicediscovery")
    assert as_sd.get_namespace(Id=mine)["Namespace"]["Name"] == "scoped-mine"
    service = as_sd.create_service(Name="web", NamespaceId=mine)["Service"]["Id"]
    c, m = code(as_sd.get_namespace, Id=other)
    assert c == "AccessDeniedException"
    assert f"servicediscovery:GetNamespace on resource: arn:aws:servicediscovery:{REGION}:{ACCOUNT}:namespace/{other} " in m, m
    c, m = code(as_sd.get_service, Id=service)
    assert f"on resource: arn:aws:servicediscovery:{REGION}:{ACCOUNT}:service/{service} " in m, m

    as_aas = as_user(gantry, key, "application-autoscaling")
    schedule = {"Schedule": "rate(1 hour)", "ScalableTargetAction": {"MinCapacity": 0, "MaxCapacity": 2},
                "ServiceNamespace": "ecs", "ScalableDimension": "ecs:service:DesiredCount"}
    as_aas.put_scheduled_action(ScheduledActionName="hourly", ResourceId="service/scoped-scaling/a", **schedule)
    c, m = code(as_aas.put_scheduled_action, ScheduledActionName="hourly", ResourceId="service/scoped-scaling/b",
                **schedule)
    assert c == "AccessDeniedException" and f"on resource: {target_b} " in m, m
    c, m = code(as_aas.register_scalable_target, ServiceNamespace="ecs", ResourceId="service/scoped-scaling/c",
                ScalableDimension="ecs:service:DesiredCount", MinCapacity=0, MaxCapacity=1)
    assert f"on resource: arn:aws:application-autoscaling:{REGION}:{ACCOUNT}:scalable-target/* " in m, m

    sd.delete_service(Id=service)
    for ns in (mine, other):
        sd.delete_namespace(Id=ns)
    for s in ("a", "b"):
        aas.deregister_scalable_target(ServiceNamespace="ecs", ResourceId=f"service/scoped-scaling/{s}",
                                       ScalableDimension="ecs:service:DesiredCount")
        ecs.delete_service(cluster="scoped-scaling", service=s, force=True)
