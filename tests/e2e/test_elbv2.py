"""ELBv2's API over the AWS Query protocol, with boto3 and awscli unchanged: load balancers,
target groups, listeners, rules, targets, tags and attributes, with ELBv2's errors."""
import re
import time

import botocore.exceptions
import pytest
import requests

from conftest import KEY, subnets


@pytest.fixture
def elb(gantry):
    return gantry.client("elbv2")


def code_of(call, *args, **kw):
    with pytest.raises(botocore.exceptions.ClientError) as e:
        call(*args, **kw)
    return e.value.response["Error"]["Code"], e.value.response["Error"]["Message"]


def test_load_balancer_lifecycle_with_attributes_and_idempotent_create(gantry, elb):
    ec2 = gantry.client("ec2")
    vpc = ec2.describe_vpcs()["Vpcs"][0]["VpcId"]
    group = ec2.describe_security_groups(GroupNames=["default"])["SecurityGroups"][0]["GroupId"]
    lb = elb.create_load_balancer(Name="web-lb", Subnets=subnets(), SecurityGroups=[group],
                                  Tags=[{"Key": "team", "Value": "web"}])["LoadBalancers"][0]
    assert lb["LoadBalancerArn"].startswith("arn:aws:elasticloadbalancing:us-east-1:")
    assert ":loadbalancer/app/web-lb/" in lb["LoadBalancerArn"]
    assert lb["Type"] == "application" and lb["Scheme"] == "internet-facing" and lb["State"]["Code"] == "active"
    zones = {s["SubnetId"]: s["AvailabilityZone"] for s in ec2.describe_subnets()["Subnets"]}
    assert [(z["SubnetId"], z["ZoneName"]) for z in lb["AvailabilityZones"]] == [(s, zones[s]) for s in subnets()]
    assert lb["VpcId"] == vpc and lb["SecurityGroups"] == [group]
    assert lb["CreatedTime"].year >= 2024  # a timestamp botocore parsed from ISO 8601
    again = elb.create_load_balancer(Name="web-lb", Subnets=subnets())["LoadBalancers"][0]
    assert again["LoadBalancerArn"] == lb["LoadBalancerArn"]
    assert code_of(elb.create_load_balancer, Name="web-lb", Type="network", Subnets=subnets())[0] == \
        "DuplicateLoadBalancerName"
    # Subnets and groups must be the VPC's, as EC2 describes them; a target group is in the VPC.
    code, msg = code_of(elb.create_load_balancer, Name="elsewhere", Subnets=["subnet-a"])
    assert (code, msg) == ("SubnetNotFound", "The subnet ID 'subnet-a' is not valid")
    assert code_of(elb.create_load_balancer, Name="nowhere")[0] == "ValidationError"
    assert code_of(elb.create_load_balancer, Name="ungrouped", Subnets=subnets(),
                   SecurityGroups=["sg-12345678"])[0] == "InvalidSecurityGroup"
    assert code_of(elb.create_target_group, Name="other-vpc", Protocol="HTTP", Port=80, VpcId="vpc-0000",
                   TargetType="ip")[0] == "InvalidConfigurationRequest"

    found = elb.describe_load_balancers(Names=["web-lb"])["LoadBalancers"]
    assert [f["LoadBalancerArn"] for f in found] == [lb["LoadBalancerArn"]]
    code, msg = code_of(elb.describe_load_balancers, Names=["nope"])
    assert code == "LoadBalancerNotFound" and "nope" in msg

    attrs = {a["Key"]: a["Value"] for a in elb.describe_load_balancer_attributes(
        LoadBalancerArn=lb["LoadBalancerArn"])["Attributes"]}
    assert attrs["idle_timeout.timeout_seconds"] == "60" and attrs["deletion_protection.enabled"] == "false"
    elb.modify_load_balancer_attributes(LoadBalancerArn=lb["LoadBalancerArn"], Attributes=[
        {"Key": "deletion_protection.enabled", "Value": "true"}, {"Key": "idle_timeout.timeout_seconds", "Value": "120"}])
    assert code_of(elb.delete_load_balancer, LoadBalancerArn=lb["LoadBalancerArn"])[0] == "OperationNotPermitted"
    code, msg = code_of(elb.modify_load_balancer_attributes, LoadBalancerArn=lb["LoadBalancerArn"],
                        Attributes=[{"Key": "access_logs.s3.enabled", "Value": "true"}])
    assert code == "InvalidConfigurationRequest" and "S3 access logs" in msg
    assert code_of(elb.modify_load_balancer_attributes, LoadBalancerArn=lb["LoadBalancerArn"],
                   Attributes=[{"Key": "no.such.key", "Value": "1"}])[0] == "InvalidConfigurationRequest"
    elb.modify_load_balancer_attributes(LoadBalancerArn=lb["LoadBalancerArn"],
                                        Attributes=[{"Key": "deletion_protection.enabled", "Value": "false"}])
    elb.delete_load_balancer(LoadBalancerArn=lb["LoadBalancerArn"])
    elb.delete_load_balancer(LoadBalancerArn=lb["LoadBalancerArn"])  # already gone: succeeds, as in ELBv2
    assert code_of(elb.describe_load_balancers, LoadBalancerArns=[lb["LoadBalancerArn"]])[0] == "LoadBalancerNotFound"


def test_listeners_rules_and_target_groups_fit_together(gantry, elb):
    lb = elb.create_load_balancer(Name="shop", Subnets=subnets())["LoadBalancers"][0]["LoadBalancerArn"]
    vpc = gantry.client("ec2").describe_vpcs()["Vpcs"][0]["VpcId"]
    blue = elb.create_target_group(Name="shop-blue", Protocol="HTTP", Port=8080, VpcId=vpc, TargetType="ip",
                                   HealthCheckPath="/health", Matcher={"HttpCode": "200-299"})["TargetGroups"][0]
    assert blue["HealthCheckIntervalSeconds"] == 30 and blue["HealthyThresholdCount"] == 5
    assert blue["HealthCheckPath"] == "/health" and blue["LoadBalancerArns"] == []
    green = elb.create_target_group(Name="shop-green", Protocol="HTTP", Port=8080, TargetType="ip")["TargetGroups"][0]

    listener = elb.create_listener(LoadBalancerArn=lb, Protocol="HTTP", Port=80, DefaultActions=[
        {"Type": "forward", "TargetGroupArn": blue["TargetGroupArn"]}])["Listeners"][0]
    assert listener["DefaultActions"][0]["ForwardConfig"]["TargetGroups"][0]["Weight"] == 1
    assert code_of(elb.create_listener, LoadBalancerArn=lb, Protocol="HTTP", Port=80, DefaultActions=[
        {"Type": "fixed-response", "FixedResponseConfig": {"StatusCode": "404"}}])[0] == "DuplicateListener"
    code, msg = code_of(elb.create_listener, LoadBalancerArn=lb, Protocol="HTTPS", Port=443, DefaultActions=[
        {"Type": "fixed-response", "FixedResponseConfig": {"StatusCode": "404"}}])
    assert code == "ValidationError" and "certificate must be specified" in msg
    code, msg = code_of(elb.create_listener, LoadBalancerArn=lb, Protocol="TCP", Port=443, DefaultActions=[
        {"Type": "fixed-response", "FixedResponseConfig": {"StatusCode": "404"}}])
    assert code == "UnsupportedProtocol" and "HTTPS" in msg
    assert code_of(elb.create_listener, LoadBalancerArn=lb, Protocol="HTTP", Port=81, DefaultActions=[
        {"Type": "redirect", "RedirectConfig": {"StatusCode": "HTTP_301"}}])[1] == \
        "The redirect configuration is not valid because it creates a loop."
    assert code_of(elb.create_listener, LoadBalancerArn=lb, Protocol="HTTP", Port=82, DefaultActions=[
        {"Type": "authenticate-oidc", "AuthenticateOidcConfig": {
            "Issuer": "i", "AuthorizationEndpoint": "a", "TokenEndpoint": "t", "UserInfoEndpoint": "u",
            "ClientId": "c"}}])[0] == "ValidationError"

    tg = elb.describe_target_groups(TargetGroupArns=[blue["TargetGroupArn"]])["TargetGroups"][0]
    assert tg["LoadBalancerArns"] == [lb]
    assert code_of(elb.delete_target_group, TargetGroupArn=blue["TargetGroupArn"])[0] == "ResourceInUse"

    rule = elb.create_rule(ListenerArn=listener["ListenerArn"], Priority=10,
                           Conditions=[{"Field": "path-pattern", "Values": ["/api/*"]}],
                           Actions=[{"Type": "forward", "ForwardConfig": {"TargetGroups": [
                               {"TargetGroupArn": blue["TargetGroupArn"], "Weight": 90},
                               {"TargetGroupArn": green["TargetGroupArn"], "Weight": 10}]}}])["Rules"][0]
    assert rule["Priority"] == "10" and rule["IsDefault"] is False
    assert rule["Conditions"][0]["PathPatternConfig"]["Values"] == ["/api/*"]
    assert code_of(elb.create_rule, ListenerArn=listener["ListenerArn"], Priority=10,
                   Conditions=[{"Field": "host-header", "Values": ["a.example"]}],
                   Actions=[{"Type": "fixed-response", "FixedResponseConfig": {"StatusCode": "503"}}])[0] == "PriorityInUse"
    fixed = {"Type": "fixed-response", "FixedResponseConfig": {"StatusCode": "503"}}
    for bad in ({"Field": "colour", "Values": ["red"]}, {"Field": "source-ip", "SourceIpConfig": {"Values": ["10.0.0.0/99"]}},
                {"Field": "path-pattern", "Values": ["/" + "a" * 200]}):
        assert code_of(elb.create_rule, ListenerArn=listener["ListenerArn"], Priority=30, Conditions=[bad],
                       Actions=[fixed])[0] == "ValidationError", bad
    second = elb.create_rule(ListenerArn=listener["ListenerArn"], Priority=20,
                             Conditions=[{"Field": "http-request-method",
                                          "HttpRequestMethodConfig": {"Values": ["POST"]}}],
                             Actions=[{"Type": "fixed-response", "FixedResponseConfig": {
                                 "StatusCode": "405", "ContentType": "text/plain", "MessageBody": "no"}}])["Rules"][0]
    rules = elb.describe_rules(ListenerArn=listener["ListenerArn"])["Rules"]
    assert [r["Priority"] for r in rules] == ["10", "20", "default"]
    swapped = elb.set_rule_priorities(RulePriorities=[{"RuleArn": rule["RuleArn"], "Priority": 20},
                                                      {"RuleArn": second["RuleArn"], "Priority": 10}])["Rules"]
    assert {r["RuleArn"]: r["Priority"] for r in swapped} == {rule["RuleArn"]: "20", second["RuleArn"]: "10"}
    default = rules[-1]
    assert code_of(elb.delete_rule, RuleArn=default["RuleArn"])[0] == "OperationNotPermitted"
    elb.modify_rule(RuleArn=default["RuleArn"], Actions=[{"Type": "forward", "TargetGroupArn": green["TargetGroupArn"]}])
    got = elb.describe_listeners(ListenerArns=[listener["ListenerArn"]])["Listeners"][0]
    assert got["DefaultActions"][0]["TargetGroupArn"] == green["TargetGroupArn"]

    other = elb.create_load_balancer(Name="other", Subnets=subnets())["LoadBalancers"][0]["LoadBalancerArn"]
    assert code_of(elb.create_listener, LoadBalancerArn=other, Protocol="HTTP", Port=80, DefaultActions=[
        {"Type": "forward", "TargetGroupArn": blue["TargetGroupArn"]}])[0] == "TargetGroupAssociationLimit"

    elb.delete_rule(RuleArn=rule["RuleArn"])
    assert code_of(elb.describe_rules, RuleArns=[rule["RuleArn"]])[0] == "RuleNotFound"
    elb.delete_listener(ListenerArn=listener["ListenerArn"])
    assert code_of(elb.describe_listeners, ListenerArns=[listener["ListenerArn"]])[0] == "ListenerNotFound"
    elb.delete_target_group(TargetGroupArn=blue["TargetGroupArn"])
    for arn in (lb, other):
        elb.delete_load_balancer(LoadBalancerArn=arn)
    elb.delete_target_group(TargetGroupArn=green["TargetGroupArn"])


def test_targets_register_drain_and_report_health(elb):
    tg = elb.create_target_group(Name="api", Protocol="HTTP", Port=80, TargetType="ip")["TargetGroups"][0]["TargetGroupArn"]
    elb.register_targets(TargetGroupArn=tg, Targets=[{"Id": "10.0.0.5"}, {"Id": "10.0.0.6", "Port": 8080}])
    health = elb.describe_target_health(TargetGroupArn=tg)["TargetHealthDescriptions"]
    assert sorted((h["Target"]["Id"], h["Target"]["Port"], h["TargetHealth"]["Reason"]) for h in health) == [
        ("10.0.0.5", 80, "Target.NotInUse"), ("10.0.0.6", 8080, "Target.NotInUse")]
    assert code_of(elb.register_targets, TargetGroupArn=tg, Targets=[{"Id": "8.8.8.8"}])[0] == "InvalidTarget"
    assert code_of(elb.register_targets, TargetGroupArn=tg, Targets=[{"Id": "not-an-ip"}])[0] == "InvalidTarget"

    lb = elb.create_load_balancer(Name="api-lb", Subnets=subnets())["LoadBalancers"][0]["LoadBalancerArn"]
    elb.create_listener(LoadBalancerArn=lb, Protocol="HTTP", Port=8000,
                        DefaultActions=[{"Type": "forward", "TargetGroupArn": tg}])
    health = elb.describe_target_health(TargetGroupArn=tg, Targets=[{"Id": "10.0.0.5"}])["TargetHealthDescriptions"]
    assert health[0]["TargetHealth"] == {"State": "initial", "Reason": "Elb.RegistrationInProgress",
                                         "Description": "Target registration is in progress"}
    assert health[0]["HealthCheckPort"] == "80"
    elb.deregister_targets(TargetGroupArn=tg, Targets=[{"Id": "10.0.0.5"}])
    health = elb.describe_target_health(TargetGroupArn=tg, Targets=[{"Id": "10.0.0.5"}])["TargetHealthDescriptions"]
    assert health[0]["TargetHealth"]["State"] == "draining"
    assert code_of(elb.deregister_targets, TargetGroupArn=tg, Targets=[{"Id": "10.0.0.99"}])[0] == "InvalidTarget"
    unknown = elb.describe_target_health(TargetGroupArn=tg, Targets=[{"Id": "10.0.0.7"}])["TargetHealthDescriptions"]
    assert unknown[0]["TargetHealth"]["Reason"] == "Target.NotRegistered"
    elb.modify_target_group_attributes(TargetGroupArn=tg, Attributes=[
        {"Key": "deregistration_delay.timeout_seconds", "Value": "0"}])
    elb.deregister_targets(TargetGroupArn=tg, Targets=[{"Id": "10.0.0.6", "Port": 8080}])
    assert [h["Target"]["Id"] for h in elb.describe_target_health(TargetGroupArn=tg)["TargetHealthDescriptions"]] == \
        ["10.0.0.5"]
    elb.delete_load_balancer(LoadBalancerArn=lb)
    elb.delete_target_group(TargetGroupArn=tg)


def test_tags_on_every_resource_kind(elb):
    lb = elb.create_load_balancer(Name="tagged", Subnets=subnets())["LoadBalancers"][0]["LoadBalancerArn"]
    tg = elb.create_target_group(Name="tagged", Protocol="HTTP", Port=80, TargetType="ip")["TargetGroups"][0]["TargetGroupArn"]
    listener = elb.create_listener(LoadBalancerArn=lb, Protocol="HTTP", Port=80, DefaultActions=[
        {"Type": "fixed-response", "FixedResponseConfig": {"StatusCode": "200"}}])["Listeners"][0]["ListenerArn"]
    elb.add_tags(ResourceArns=[lb, tg, listener], Tags=[{"Key": "env", "Value": "prod"}, {"Key": "x", "Value": "1"}])
    elb.remove_tags(ResourceArns=[tg], TagKeys=["x"])
    got = {d["ResourceArn"]: {t["Key"]: t["Value"] for t in d["Tags"]}
           for d in elb.describe_tags(ResourceArns=[lb, tg, listener])["TagDescriptions"]}
    assert got == {lb: {"env": "prod", "x": "1"}, tg: {"env": "prod"}, listener: {"env": "prod", "x": "1"}}
    assert code_of(elb.add_tags, ResourceArns=[lb], Tags=[{"Key": "aws:no", "Value": "1"}])[0] == "ValidationError"
    assert code_of(elb.add_tags, ResourceArns=[lb], Tags=[{"Key": f"k{i}", "Value": "v"} for i in range(51)])[0] \
        == "TooManyTags"
    elb.delete_load_balancer(LoadBalancerArn=lb)
    elb.delete_target_group(TargetGroupArn=tg)


def test_model_validation_and_unknown_actions_answer_in_query_xml(gantry, elb):
    code, msg = code_of(elb.create_target_group, Name="x" * 33, Protocol="HTTP", Port=80, TargetType="ip")
    assert code == "ValidationError" and "between 1 and 32" in msg
    code, msg = code_of(elb.create_target_group, Name="hc", Protocol="HTTP", Port=80, TargetType="ip", HealthCheckIntervalSeconds=5,
                        HealthCheckTimeoutSeconds=10)
    assert code == "ValidationError" and "smaller than the interval" in msg
    code, msg = code_of(elb.describe_load_balancers, PageSize=401)
    assert code == "ValidationError" and msg.startswith("1 validation error detected: Value '401' at 'pageSize'")
    # A raw request, signed by botocore's own signer, with an action the model does not have.
    import botocore.auth
    import botocore.awsrequest
    import botocore.credentials
    req = botocore.awsrequest.AWSRequest(method="POST", url=gantry.endpoint,
                                         data="Action=LaunchRockets&Version=2015-12-01",
                                         headers={"Content-Type": "application/x-www-form-urlencoded; charset=utf-8"})
    from conftest import SECRET
    botocore.auth.SigV4Auth(botocore.credentials.Credentials(KEY, SECRET), "elasticloadbalancing",
                            "us-east-1").add_auth(req)
    r = requests.post(gantry.endpoint, data=req.body, headers=dict(req.headers))
    assert r.status_code == 400 and r.headers["content-type"] == "text/xml"
    assert "<Code>InvalidAction</Code>" in r.text and "<ErrorResponse xmlns=" in r.text
    # The same request unsigned: a Query-shaped authentication error.
    r = requests.post(gantry.endpoint, data="Action=DescribeLoadBalancers&Version=2015-12-01",
                      headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert r.status_code == 403 and "<Code>MissingAuthenticationToken</Code>" in r.text


def test_awscli_elbv2_round_trip(gantry):
    out, _ = gantry.aws("elbv2", "create-target-group", "--name", "cli-tg", "--protocol", "HTTP", "--port", "80",
                        "--target-type", "ip")
    tg = out["TargetGroups"][0]["TargetGroupArn"]
    out, _ = gantry.aws("elbv2", "describe-target-groups", "--names", "cli-tg")
    assert out["TargetGroups"][0]["TargetGroupArn"] == tg
    _, p = gantry.aws("elbv2", "describe-target-groups", "--names", "missing-tg", check=False)
    assert p.returncode != 0 and "TargetGroupNotFound" in p.stderr
    gantry.aws("elbv2", "delete-target-group", "--target-group-arn", tg)


# A task that serves "<colour> <random>" at /, a /health file, and a CGI script echoing its
# environment (busybox httpd), on port 8080.
SERVE = ("trap 'exit 0' TERM; mkdir -p /tmp/w/cgi-bin; echo \"{colour} $RANDOM$RANDOM\" > /tmp/w/index.html; "
         "echo {colour} > /tmp/w/{colour}; echo ok > /tmp/w/health; "
         "printf '#!/bin/sh\\necho Content-Type: text/plain\\necho\\nenv\\n' > /tmp/w/cgi-bin/env; "
         "chmod +x /tmp/w/cgi-bin/env; httpd -f -p 8080 -h /tmp/w & wait")


def start_tasks(ecs, colour, count):
    from conftest import register, run
    ecs.create_cluster(clusterName="default")
    td = register(ecs, f"lb-{colour}", [{"name": "web", "command": ["sh", "-c", SERVE.format(colour=colour)]}])
    tasks = run(ecs, "default", td["taskDefinitionArn"], count=count)
    arns = [t["taskArn"] for t in tasks]
    ecs.get_waiter("tasks_running").wait(cluster="default", tasks=arns, WaiterConfig={"Delay": 1, "MaxAttempts": 60})
    described = ecs.describe_tasks(cluster="default", tasks=arns)["tasks"]
    return arns, [t["containers"][0]["networkInterfaces"][0]["privateIpv4Address"] for t in described]


def wait_health(elb, tg, want, count, timeout=60):
    import time
    deadline = time.time() + timeout
    while time.time() < deadline:
        states = [h["TargetHealth"]["State"] for h in elb.describe_target_health(TargetGroupArn=tg)["TargetHealthDescriptions"]]
        if states.count(want) == count:
            return
        time.sleep(0.5)
    raise AssertionError(f"targets of {tg} did not become {want}: {states}")


def target_group(elb, name, **kw):
    return elb.create_target_group(Name=name, Protocol=kw.pop("Protocol", "HTTP"), Port=8080, TargetType="ip",
                                   HealthCheckIntervalSeconds=5, HealthCheckTimeoutSeconds=2,
                                   HealthyThresholdCount=2, UnhealthyThresholdCount=2, **kw)["TargetGroups"][0]["TargetGroupArn"]


def test_a_load_balancer_serves_tasks_by_its_dns_name(gantry, elb, ecs):
    import socket
    import time
    blue_arns, blue_ips = start_tasks(ecs, "blue", 2)
    green_arns, green_ips = start_tasks(ecs, "green", 1)
    blue = target_group(elb, "e2e-blue", HealthCheckPath="/health")
    green = target_group(elb, "e2e-green", HealthCheckPath="/health")
    elb.register_targets(TargetGroupArn=blue, Targets=[{"Id": ip} for ip in blue_ips])
    elb.register_targets(TargetGroupArn=green, Targets=[{"Id": ip} for ip in green_ips])
    lb = elb.create_load_balancer(Name="e2e-web", Subnets=subnets())["LoadBalancers"][0]
    listener = elb.create_listener(LoadBalancerArn=lb["LoadBalancerArn"], Protocol="HTTP", Port=80, DefaultActions=[
        {"Type": "forward", "TargetGroupArn": blue}])["Listeners"][0]["ListenerArn"]
    rule = lambda prio, cond, action: elb.create_rule(ListenerArn=listener, Priority=prio, Conditions=[cond],  # noqa: E731
                                                      Actions=[action])
    rule(10, {"Field": "path-pattern", "Values": ["/green*"]}, {"Type": "forward", "TargetGroupArn": green})
    rule(20, {"Field": "path-pattern", "Values": ["/fixed"]},
         {"Type": "fixed-response", "FixedResponseConfig": {"StatusCode": "503", "ContentType": "text/plain",
                                                            "MessageBody": "down for maintenance"}})
    rule(30, {"Field": "path-pattern", "Values": ["/old*"]},
         {"Type": "redirect", "RedirectConfig": {"Path": "/new", "StatusCode": "HTTP_301"}})
    wait_health(elb, blue, "healthy", 2)
    wait_health(elb, green, "healthy", 1)

    dns = lb["DNSName"]
    address = socket.gethostbyname(dns)
    assert address.startswith(gantry.lb_network.rsplit(".", 2)[0] + "."), (dns, address)
    base = f"http://{dns}"
    bodies = {requests.get(f"{base}/", timeout=5).text for _ in range(6)}
    assert len(bodies) == 2 and all(b.startswith("blue ") for b in bodies), bodies  # both blue tasks, in turn
    # Duration-based stickiness: a client with the AWSALB cookie keeps its target.
    elb.modify_target_group_attributes(TargetGroupArn=blue, Attributes=[
        {"Key": "stickiness.enabled", "Value": "true"}, {"Key": "stickiness.lb_cookie.duration_seconds", "Value": "60"}])
    deadline = time.time() + 5
    while "AWSALB" not in (r := requests.get(f"{base}/", timeout=5)).headers.get("set-cookie", "") and time.time() < deadline:
        time.sleep(0.05)
    assert "Expires=" in r.headers["set-cookie"] and blue_ips[0] not in r.headers["set-cookie"]
    session = requests.Session()
    first = session.get(f"{base}/", timeout=5).text
    assert {session.get(f"{base}/", timeout=5).text for _ in range(6)} == {first}
    elb.modify_target_group_attributes(TargetGroupArn=blue, Attributes=[{"Key": "stickiness.enabled", "Value": "false"}])
    # Group-level stickiness: across a 50/50 forward, a client with AWSALBTG keeps its group.
    both = {"Type": "forward", "ForwardConfig": {"TargetGroups": [{"TargetGroupArn": blue, "Weight": 1},
                                                                  {"TargetGroupArn": green, "Weight": 1}]}}
    by_query = {"Field": "query-string", "QueryStringConfig": {"Values": [{"Key": "both", "Value": "1"}]}}
    assert code_of(elb.create_rule, ListenerArn=listener, Priority=40, Conditions=[by_query], Actions=[dict(
        both, ForwardConfig=dict(both["ForwardConfig"], TargetGroupStickinessConfig={"Enabled": True}))])[0] == "ValidationError"
    rule(40, by_query, dict(both, ForwardConfig=dict(
        both["ForwardConfig"], TargetGroupStickinessConfig={"Enabled": True, "DurationSeconds": 60})))
    deadline = time.time() + 5
    while "AWSALBTG" not in (r := requests.get(f"{base}/?both=1", timeout=5)).headers.get("set-cookie", ""):
        assert time.time() < deadline, "no AWSALBTG cookie"
        time.sleep(0.05)
    colour = lambda get: get(f"{base}/?both=1", timeout=5).text.split()[0]  # noqa: E731
    assert {colour(requests.get) for _ in range(6)} == {"blue", "green"}, "without the cookie: both groups"
    for _ in range(2):
        session = requests.Session()
        first = colour(session.get)
        assert {colour(session.get) for _ in range(6)} == {first}
    assert requests.get(f"{base}/green", timeout=5).text.strip() == "green"
    fixed = requests.get(f"{base}/fixed", timeout=5)
    assert (fixed.status_code, fixed.text, fixed.headers["content-type"]) == (503, "down for maintenance", "text/plain")
    moved = requests.get(f"{base}/old/page?x=1", allow_redirects=False, timeout=5)
    assert moved.status_code == 301 and moved.headers["location"] == f"http://{dns}/new?x=1"
    env = requests.get(f"{base}/cgi-bin/env", headers={"X-Forwarded-For": "203.0.113.9"}, timeout=5).text
    assert "HTTP_X_FORWARDED_FOR=203.0.113.9, 127.0.0.1" in env, env
    assert "HTTP_X_FORWARDED_PROTO=http" in env and "HTTP_X_FORWARDED_PORT=80" in env
    env = requests.get(f"{base}/cgi-bin/env", timeout=5).text
    assert "HTTP_X_FORWARDED_FOR=127.0.0.1\n" in env, env
    # With the client's port: an existing connection picks the setting up with the configuration.
    elb.modify_load_balancer_attributes(LoadBalancerArn=lb["LoadBalancerArn"], Attributes=[
        {"Key": "routing.http.xff_client_port.enabled", "Value": "true"}])
    deadline = time.time() + 10
    while time.time() < deadline:
        env = requests.get(f"{base}/cgi-bin/env", timeout=5).text
        if re.search(r"^HTTP_X_FORWARDED_FOR=127\.0\.0\.1:\d+$", env, re.M):
            break
        time.sleep(0.1)
    assert re.search(r"^HTTP_X_FORWARDED_FOR=127\.0\.0\.1:\d+$", env, re.M), env
    elb.modify_load_balancer_attributes(LoadBalancerArn=lb["LoadBalancerArn"], Attributes=[
        {"Key": "routing.http.xff_client_port.enabled", "Value": "false"}])

    # A stopped task fails its checks and gets no more requests.
    ecs.stop_task(cluster="default", task=blue_arns[0])
    deadline = time.time() + 60
    while time.time() < deadline:
        health = {h["Target"]["Id"]: h["TargetHealth"] for h in
                  elb.describe_target_health(TargetGroupArn=blue)["TargetHealthDescriptions"]}
        if health[blue_ips[0]]["State"] == "unhealthy":
            break
        time.sleep(0.5)
    assert health[blue_ips[0]]["Reason"] in ("Target.FailedHealthChecks", "Target.Timeout"), health
    assert health[blue_ips[1]]["State"] == "healthy"
    time.sleep(0.5)  # the data plane follows the verdict within milliseconds
    assert len({requests.get(f"{base}/", timeout=5).text for _ in range(4)}) == 1

    # A group with no registered targets answers ALB's 503.
    elb.deregister_targets(TargetGroupArn=green, Targets=[{"Id": ip} for ip in green_ips])
    deadline = time.time() + 5  # the data plane follows the store within milliseconds
    while (gone := requests.get(f"{base}/green", timeout=5)).status_code == 200 and time.time() < deadline:
        time.sleep(0.05)
    assert gone.status_code == 503 and "503 Service Temporarily Unavailable" in gone.text

    elb.delete_load_balancer(LoadBalancerArn=lb["LoadBalancerArn"])
    deadline = time.time() + 10
    while time.time() < deadline and dns in open("/etc/hosts").read():
        time.sleep(0.2)
    assert dns not in open("/etc/hosts").read()
    with pytest.raises(requests.exceptions.ConnectionError):
        requests.get(f"http://{address}/", timeout=5)
    for tg in (blue, green):
        elb.delete_target_group(TargetGroupArn=tg)
    ecs.stop_task(cluster="default", task=blue_arns[1])
    ecs.stop_task(cluster="default", task=green_arns[0])


def test_a_network_load_balancer_forwards_tcp(gantry, elb, ecs):
    arns, ips = start_tasks(ecs, "tcp", 1)
    tg = target_group(elb, "e2e-tcp", Protocol="TCP")
    elb.register_targets(TargetGroupArn=tg, Targets=[{"Id": ips[0]}])
    lb = elb.create_load_balancer(Name="e2e-nlb", Type="network", Subnets=subnets())["LoadBalancers"][0]
    elb.create_listener(LoadBalancerArn=lb["LoadBalancerArn"], Protocol="TCP", Port=9000,
                        DefaultActions=[{"Type": "forward", "TargetGroupArn": tg}])
    wait_health(elb, tg, "healthy", 1)
    assert requests.get(f"http://{lb['DNSName']}:9000/tcp", timeout=5).text.strip() == "tcp"
    elb.delete_load_balancer(LoadBalancerArn=lb["LoadBalancerArn"])
    elb.delete_target_group(TargetGroupArn=tg)
    ecs.stop_task(cluster="default", task=arns[0])


def test_a_network_load_balancer_sends_the_client_in_a_proxy_protocol_header(gantry, elb, ecs):
    """With proxy_protocol_v2.enabled each connection reaches the target after a PROXY protocol
    v2 header naming the client's address and port and the listener's, as NLB sends it (the
    target here echoes what it receives); health checks pass with it on."""
    import socket
    import struct
    from conftest import register, run
    ecs.create_cluster(clusterName="default")
    td = register(ecs, "lb-echo", [{"name": "echo", "command": ["sh", "-c", "trap 'exit 0' TERM; nc -ll -p 8080 -e cat & wait"]}])
    arn = run(ecs, "default", td["taskDefinitionArn"])[0]["taskArn"]
    ecs.get_waiter("tasks_running").wait(cluster="default", tasks=[arn], WaiterConfig={"Delay": 1, "MaxAttempts": 60})
    ip = ecs.describe_tasks(cluster="default", tasks=[arn])["tasks"][0]["containers"][0]["networkInterfaces"][0]["privateIpv4Address"]
    tg = target_group(elb, "e2e-proxy", Protocol="TCP")
    code, msg = code_of(elb.modify_target_group_attributes, TargetGroupArn=tg,
                        Attributes=[{"Key": "proxy_protocol_v2.enabled", "Value": "yes"}])
    assert code == "InvalidConfigurationRequest" and "'true' or 'false'" in msg, (code, msg)
    elb.modify_target_group_attributes(TargetGroupArn=tg, Attributes=[{"Key": "proxy_protocol_v2.enabled", "Value": "true"}])
    elb.register_targets(TargetGroupArn=tg, Targets=[{"Id": ip}])
    lb = elb.create_load_balancer(Name="e2e-nlb-proxy", Type="network", Subnets=subnets())["LoadBalancers"][0]
    elb.create_listener(LoadBalancerArn=lb["LoadBalancerArn"], Protocol="TCP", Port=9001,
                        DefaultActions=[{"Type": "forward", "TargetGroupArn": tg}])
    wait_health(elb, tg, "healthy", 1)
    try:
        address = socket.gethostbyname(lb["DNSName"])
        with socket.create_connection((address, 9001), timeout=5) as c:
            c.sendall(b"hello\n")
            got = b""
            while not got.endswith(b"hello\n"):
                chunk = c.recv(4096)
                assert chunk, f"closed after {got!r}"
                got += chunk
            client = c.getsockname()
        header, rest = got[:28], got[28:]
        assert header[:12] == b"\r\n\r\n\x00\r\nQUIT\n" and header[12:16] == b"\x21\x11\x00\x0c", got
        src, dst, sport, dport = struct.unpack("!4s4sHH", header[16:28])
        assert (socket.inet_ntoa(src), sport) == client, (got, client)
        assert (socket.inet_ntoa(dst), dport) == (address, 9001)
        assert rest == b"hello\n"
    finally:
        elb.delete_load_balancer(LoadBalancerArn=lb["LoadBalancerArn"])
        elb.delete_target_group(TargetGroupArn=tg)
        ecs.stop_task(cluster="default", task=arn)


def completed(svc):
    return [d["rolloutState"] for d in svc["deployments"]] == ["COMPLETED"] and svc["runningCount"] == 2


def deploy_under_load(ecs, url, service, td, until, timeout=90):
    """Updates a service to `td` while one client sends requests back to back (bounded in
    time), until `until(service)`. Returns the service, the colours served in order, and the
    failures (status codes or exceptions)."""
    import threading
    import time
    seen, bad, stop = [], [], threading.Event()

    def load():
        s = requests.Session()
        deadline = time.time() + timeout
        while not stop.is_set() and time.time() < deadline:
            try:
                r = s.get(url, timeout=5)
                seen.append(r.text.split()[0] if r.status_code == 200 else r.status_code)
                if r.status_code != 200:
                    bad.append(r.status_code)
            except requests.RequestException as e:
                bad.append(repr(e))
    thread = threading.Thread(target=load)
    thread.start()
    try:
        time.sleep(1)
        ecs.update_service(cluster="default", service=service, taskDefinition=td)
        deadline = time.time() + timeout
        while time.time() < deadline:
            svc = ecs.describe_services(cluster="default", services=[service])["services"][0]
            if until(svc):
                break
            time.sleep(0.5)
        time.sleep(1)
    finally:
        stop.set()
        thread.join()
    return svc, seen, bad


def test_a_service_behind_a_load_balancer_rolls_out_without_losing_a_request(gantry, elb, ecs):
    import time
    from conftest import NETWORK, register
    ecs.create_cluster(clusterName="default")
    defs = [register(ecs, "lb-svc", [{"name": "web", "portMappings": [{"containerPort": 8080}],
                                      "command": ["sh", "-c", SERVE.format(colour=colour)]}])["taskDefinitionArn"]
            for colour in ("one", "two")]
    tg = target_group(elb, "e2e-svc", HealthCheckPath="/health")
    elb.modify_target_group_attributes(TargetGroupArn=tg, Attributes=[
        {"Key": "deregistration_delay.timeout_seconds", "Value": "3"}])
    lb = elb.create_load_balancer(Name="e2e-svc", Subnets=subnets())["LoadBalancers"][0]
    elb.create_listener(LoadBalancerArn=lb["LoadBalancerArn"], Protocol="HTTP", Port=80,
                        DefaultActions=[{"Type": "forward", "TargetGroupArn": tg}])
    bad = botocore.exceptions.ClientError
    with pytest.raises(bad, match="did not have a container port 9090 defined"):
        ecs.create_service(cluster="default", serviceName="lbsvc", taskDefinition=defs[0], desiredCount=2,
                           networkConfiguration=NETWORK, launchType="FARGATE",
                           loadBalancers=[{"targetGroupArn": tg, "containerName": "web", "containerPort": 9090}])
    ecs.create_service(cluster="default", serviceName="lbsvc", taskDefinition=defs[0], desiredCount=2,
                       networkConfiguration=NETWORK, launchType="FARGATE", healthCheckGracePeriodSeconds=10,
                       deploymentConfiguration={"minimumHealthyPercent": 100, "maximumPercent": 200},
                       loadBalancers=[{"targetGroupArn": tg, "containerName": "web", "containerPort": 8080}])
    ecs.get_waiter("services_stable").wait(cluster="default", services=["lbsvc"],
                                           WaiterConfig={"Delay": 1, "MaxAttempts": 60})
    wait_health(elb, tg, "healthy", 2)

    # Constant load through the rollout: one client, requests back to back, bounded in time.
    svc, seen, bad_codes = deploy_under_load(ecs, f"http://{lb['DNSName']}/", "lbsvc", defs[1], completed)
    assert svc["deployments"][0]["rolloutState"] == "COMPLETED", svc["deployments"]
    assert bad_codes == [], f"{len(bad_codes)} failed of {len(seen)}: {bad_codes[:5]}\n{gantry.log()}"
    assert len(seen) > 50 and "one" in seen and seen[-1] == "two", (len(seen), seen[:3], seen[-3:])
    messages = [e["message"] for e in svc["events"]]
    assert any("has begun draining connections on" in m for m in messages), messages
    assert any("registered 2 targets in (target-group" in m for m in messages), messages
    health = elb.describe_target_health(TargetGroupArn=tg)["TargetHealthDescriptions"]
    assert sorted(h["TargetHealth"]["State"] for h in health) == ["healthy", "healthy"], health

    ecs.delete_service(cluster="default", service="lbsvc", force=True)
    deadline = time.time() + 60
    while time.time() < deadline and elb.describe_target_health(TargetGroupArn=tg)["TargetHealthDescriptions"]:
        time.sleep(0.5)
    assert elb.describe_target_health(TargetGroupArn=tg)["TargetHealthDescriptions"] == []
    elb.delete_load_balancer(LoadBalancerArn=lb["LoadBalancerArn"])
    elb.delete_target_group(TargetGroupArn=tg)


# A task whose /cgi-bin/slow answers after 3 s (a request in flight while its target drains).
SLOW = SERVE.replace("chmod +x /tmp/w/cgi-bin/env;",
                     "chmod +x /tmp/w/cgi-bin/env; printf '#!/bin/sh\\nsleep 3\\necho Content-Type: text/plain\\n"
                     "echo\\necho done\\n' > /tmp/w/cgi-bin/slow; chmod +x /tmp/w/cgi-bin/slow;")


def test_weights_draining_and_hostile_clients(gantry, elb, ecs):
    import socket
    import threading
    import time
    from conftest import register, run
    ecs.create_cluster(clusterName="default")
    td = register(ecs, "lb-slow", [{"name": "web", "command": ["sh", "-c", SLOW.format(colour="slow")]}])
    tasks = run(ecs, "default", td["taskDefinitionArn"], count=2)
    arns = [t["taskArn"] for t in tasks]
    ecs.get_waiter("tasks_running").wait(cluster="default", tasks=arns, WaiterConfig={"Delay": 1, "MaxAttempts": 60})
    ips = [t["containers"][0]["networkInterfaces"][0]["privateIpv4Address"]
           for t in ecs.describe_tasks(cluster="default", tasks=arns)["tasks"]]
    heavy, light = target_group(elb, "e2e-heavy"), target_group(elb, "e2e-light")
    elb.register_targets(TargetGroupArn=heavy, Targets=[{"Id": ips[0]}])
    elb.register_targets(TargetGroupArn=light, Targets=[{"Id": ips[1]}])
    lb = elb.create_load_balancer(Name="e2e-weights", Subnets=subnets())["LoadBalancers"][0]
    elb.create_listener(LoadBalancerArn=lb["LoadBalancerArn"], Protocol="HTTP", Port=80, DefaultActions=[
        {"Type": "forward", "ForwardConfig": {"TargetGroups": [{"TargetGroupArn": heavy, "Weight": 90},
                                                               {"TargetGroupArn": light, "Weight": 10}]}}])
    wait_health(elb, heavy, "healthy", 1)
    wait_health(elb, light, "healthy", 1)
    base = f"http://{lb['DNSName']}"

    # 90/10 weights over 1,000 requests land within 3 points of 90/10.
    s = requests.Session()
    bodies = [s.get(f"{base}/", timeout=5).text for _ in range(1000)]
    first = bodies[0]
    share = bodies.count(first) / len(bodies)
    assert len(set(bodies)) == 2 and abs(max(share, 1 - share) - 0.9) <= 0.03, (share, set(bodies))

    # A slow request in flight finishes while its target drains; new requests go elsewhere.
    elb.modify_target_group_attributes(TargetGroupArn=heavy, Attributes=[
        {"Key": "deregistration_delay.timeout_seconds", "Value": "10"}])
    elb.modify_listener(ListenerArn=elb.describe_listeners(LoadBalancerArn=lb["LoadBalancerArn"])["Listeners"][0]["ListenerArn"],
                        DefaultActions=[{"Type": "forward", "ForwardConfig": {"TargetGroups": [
                            {"TargetGroupArn": heavy, "Weight": 1}]}}])
    elb.register_targets(TargetGroupArn=heavy, Targets=[{"Id": ips[1]}])
    wait_health(elb, heavy, "healthy", 2)
    slow = {}
    started = time.time()
    t = threading.Thread(target=lambda: slow.update(r=requests.get(f"{base}/cgi-bin/slow", timeout=10)))
    t.start()
    time.sleep(0.5)
    # Both targets drain while it works: it finishes, and nothing new reaches them.
    elb.deregister_targets(TargetGroupArn=heavy, Targets=[{"Id": ips[0]}, {"Id": ips[1]}])
    deadline = time.time() + 2
    while (fresh := requests.get(f"{base}/", timeout=5)).status_code == 200 and time.time() < deadline:
        time.sleep(0.05)
    assert fresh.status_code == 503
    t.join()
    assert slow["r"].status_code == 200 and slow["r"].text.strip() == "done", slow["r"].text
    assert time.time() - started >= 3

    # Hostile clients: oversized heads are refused, a client that never finishes its head is
    # cut off after the idle timeout.
    big = requests.get(f"{base}/", headers={"X-Big": "a" * 100_000}, timeout=5)
    assert big.status_code == 431, big.status_code
    elb.modify_load_balancer_attributes(LoadBalancerArn=lb["LoadBalancerArn"], Attributes=[
        {"Key": "idle_timeout.timeout_seconds", "Value": "2"}])
    time.sleep(0.5)
    c = socket.create_connection((socket.gethostbyname(lb["DNSName"]), 80), timeout=10)
    c.sendall(b"GET / HTTP/1.1\r\nHost: slowloris\r\n")
    t0 = time.time()
    rest = c.recv(1024)  # the server closes (or answers 408) instead of waiting forever
    assert time.time() - t0 < 8 and (rest == b"" or rest.startswith(b"HTTP/1.1 408")), rest
    c.close()

    elb.delete_load_balancer(LoadBalancerArn=lb["LoadBalancerArn"])
    for tg in (heavy, light):
        elb.delete_target_group(TargetGroupArn=tg)
    for arn in arns:
        ecs.stop_task(cluster="default", task=arn)


def test_malformed_query_requests_are_refused_in_query_xml(gantry):
    import botocore.auth
    import botocore.awsrequest
    import botocore.credentials
    from conftest import SECRET

    def send(body):
        req = botocore.awsrequest.AWSRequest(method="POST", url=gantry.endpoint, data=body,
                                             headers={"Content-Type": "application/x-www-form-urlencoded"})
        botocore.auth.SigV4Auth(botocore.credentials.Credentials(KEY, SECRET), "elasticloadbalancing",
                                "us-east-1").add_auth(req)
        return requests.post(gantry.endpoint, data=req.body, headers=dict(req.headers))

    r = send("Action=DescribeLoadBalancers&Version=2015-12-01&Names.member.1=a&Names.member.1=b")
    assert r.status_code == 400 and "<Code>MalformedQueryString</Code>" in r.text, r.text
    r = send("Action=DescribeLoadBalancers&Version=2012-06-01")
    assert r.status_code == 400 and "<Code>NoSuchVersion</Code>" in r.text, r.text
    r = send("Action=CreateTargetGroup&Version=2015-12-01&Name=x&Port=eighty&Bogus=1")
    assert r.status_code == 400 and "<Code>ValidationError</Code>" in r.text
    assert "Parameter &apos;Bogus&apos; is not recognized" in r.text and "Member must be an integer" in r.text, r.text


def rule_weights(elb, rule):
    action = elb.describe_rules(RuleArns=[rule])["Rules"][0]["Actions"][0]
    return {g["TargetGroupArn"]: g["Weight"] for g in action["ForwardConfig"]["TargetGroups"]}


def test_blue_green_shifts_production_traffic_and_rolls_back(gantry, elb, ecs):
    import time
    from conftest import NETWORK, register
    ecs.create_cluster(clusterName="default")
    web = {"name": "web", "portMappings": [{"containerPort": 8080}]}
    defs = {c: register(ecs, "lb-bg", [dict(web, command=["sh", "-c", SERVE.format(colour=c)])])["taskDefinitionArn"]
            for c in ("one", "two")}
    # A release whose tasks never pass their health check (no /health).
    broken = SERVE.format(colour="broken").replace("echo ok > /tmp/w/health; ", "")
    defs["broken"] = register(ecs, "lb-bg", [dict(web, command=["sh", "-c", broken])])["taskDefinitionArn"]
    a, b = target_group(elb, "e2e-bg-a", HealthCheckPath="/health"), target_group(elb, "e2e-bg-b", HealthCheckPath="/health")
    for tg in (a, b):
        elb.modify_target_group_attributes(TargetGroupArn=tg, Attributes=[
            {"Key": "deregistration_delay.timeout_seconds", "Value": "2"}])
    lb = elb.create_load_balancer(Name="e2e-bg", Subnets=subnets())["LoadBalancers"][0]
    not_found = [{"Type": "fixed-response", "FixedResponseConfig": {"StatusCode": "404"}}]
    prod = elb.create_listener(LoadBalancerArn=lb["LoadBalancerArn"], Protocol="HTTP", Port=80,
                               DefaultActions=not_found)["Listeners"][0]["ListenerArn"]
    test = elb.create_listener(LoadBalancerArn=lb["LoadBalancerArn"], Protocol="HTTP", Port=8080,
                               DefaultActions=not_found)["Listeners"][0]["ListenerArn"]
    both = [{"Type": "forward", "ForwardConfig": {"TargetGroups": [{"TargetGroupArn": a, "Weight": 100},
                                                                   {"TargetGroupArn": b, "Weight": 0}]}}]
    everything = [{"Field": "path-pattern", "Values": ["/*"]}]
    prod_rule = elb.create_rule(ListenerArn=prod, Priority=1, Conditions=everything, Actions=both)["Rules"][0]["RuleArn"]
    test_rule = elb.create_rule(ListenerArn=test, Priority=1, Conditions=everything, Actions=both)["Rules"][0]["RuleArn"]
    advanced = {"alternateTargetGroupArn": b, "productionListenerRule": prod_rule, "testListenerRule": test_rule,
                "roleArn": "arn:aws:iam::123456789012:role/ecsInfrastructure"}
    lbs = [{"targetGroupArn": a, "containerName": "web", "containerPort": 8080, "advancedConfiguration": advanced}]
    config = {"strategy": "BLUE_GREEN", "bakeTimeInMinutes": 0,
              "deploymentCircuitBreaker": {"enable": True, "rollback": True,
                                           "thresholdConfiguration": {"type": "COUNT", "value": 2}}}
    with pytest.raises(botocore.exceptions.ClientError, match="needs advancedConfiguration"):
        ecs.create_service(cluster="default", serviceName="bg", taskDefinition=defs["one"], desiredCount=2,
                           networkConfiguration=NETWORK, launchType="FARGATE", deploymentConfiguration=config,
                           loadBalancers=[{k: v for k, v in lbs[0].items() if k != "advancedConfiguration"}])
    with pytest.raises(botocore.exceptions.ClientError, match="Lambda"):
        ecs.create_service(cluster="default", serviceName="bg", taskDefinition=defs["one"], desiredCount=2,
                           networkConfiguration=NETWORK, launchType="FARGATE", loadBalancers=lbs,
                           deploymentConfiguration=dict(config, lifecycleHooks=[{
                               "hookTargetArn": "arn:aws:lambda:us-east-1:123456789012:function:f",
                               "roleArn": "arn:aws:iam::123456789012:role/r", "lifecycleStages": ["POST_SCALE_UP"]}]))
    ecs.create_service(cluster="default", serviceName="bg", taskDefinition=defs["one"], desiredCount=2,
                       networkConfiguration=NETWORK, launchType="FARGATE", deploymentConfiguration=config,
                       loadBalancers=lbs)
    ecs.get_waiter("services_stable").wait(cluster="default", services=["bg"], WaiterConfig={"Delay": 1, "MaxAttempts": 60})
    wait_health(elb, a, "healthy", 2)
    assert rule_weights(elb, prod_rule) == {a: 100, b: 0}
    url = f"http://{lb['DNSName']}/"

    # Blue (A, "one") to green (B, "two"): all production traffic moves at once, nothing fails.
    svc, seen, bad = deploy_under_load(ecs, url, "bg", defs["two"], completed)
    assert completed(svc), svc["deployments"]
    assert bad == [] and seen[0] == "one" and seen[-1] == "two", (bad[:3], len(seen), seen[-2:],
                                                                  [e["message"] for e in svc["events"]][:12])
    switch = seen.index("two")
    assert "one" not in seen[switch:], "traffic moved once, not back and forth"
    assert rule_weights(elb, prod_rule) == {a: 0, b: 100}
    wait_health(elb, b, "healthy", 2)
    assert elb.describe_target_health(TargetGroupArn=a)["TargetHealthDescriptions"] == []
    messages = [e["message"] for e in svc["events"]]
    assert any("shifted 100% of production traffic" in m for m in messages), messages

    # A broken release: its tasks fail their checks in the other group, the circuit breaker
    # rolls back, and production never leaves the running release.
    def rolled_back(svc):
        # The failed deployment is pruned once blue is steady again; the event stays.
        rolled = any("rolling back to deployment" in e["message"] for e in svc["events"])
        return rolled and svc["taskDefinition"] == defs["two"] and completed(svc)
    svc, seen, bad = deploy_under_load(ecs, url, "bg", defs["broken"], rolled_back)
    assert rolled_back(svc), (svc["deployments"], [e["message"] for e in svc["events"]][:8])
    assert bad == [] and set(seen) == {"two"}, (bad[:3], set(seen))
    assert rule_weights(elb, prod_rule) == {a: 0, b: 100}
    broken = ecs.list_service_deployments(service="bg")["serviceDeployments"][0]
    assert broken["status"] == "ROLLBACK_SUCCESSFUL", broken

    ecs.delete_service(cluster="default", service="bg", force=True)
    deadline = time.time() + 60
    while time.time() < deadline and any(elb.describe_target_health(TargetGroupArn=tg)["TargetHealthDescriptions"]
                                         for tg in (a, b)):
        time.sleep(0.5)
    elb.delete_load_balancer(LoadBalancerArn=lb["LoadBalancerArn"])
    for tg in (a, b):
        elb.delete_target_group(TargetGroupArn=tg)


def test_slow_start_ramps_a_new_targets_share(gantry, elb, ecs):
    arns, ips = start_tasks(ecs, "slow", 2)
    tg = target_group(elb, "e2e-slow", HealthCheckPath="/health")
    for bad, why in [("10", "0 or an integer between 30 and 900"), ("901", "0 or an integer")]:
        code, msg = code_of(elb.modify_target_group_attributes, TargetGroupArn=tg,
                            Attributes=[{"Key": "slow_start.duration_seconds", "Value": bad}])
        assert code == "InvalidConfigurationRequest" and why in msg
    elb.modify_target_group_attributes(TargetGroupArn=tg, Attributes=[{"Key": "slow_start.duration_seconds", "Value": "30"}])
    code, msg = code_of(elb.modify_target_group_attributes, TargetGroupArn=tg, Attributes=[
        {"Key": "load_balancing.algorithm.type", "Value": "least_outstanding_requests"}])
    assert code == "InvalidConfigurationRequest" and "Slow start" in msg
    lb = elb.create_load_balancer(Name="e2e-slow", Subnets=subnets())["LoadBalancers"][0]
    elb.create_listener(LoadBalancerArn=lb["LoadBalancerArn"], Protocol="HTTP", Port=80,
                        DefaultActions=[{"Type": "forward", "TargetGroupArn": tg}])
    elb.register_targets(TargetGroupArn=tg, Targets=[{"Id": ips[0]}])
    wait_health(elb, tg, "healthy", 1)
    base = f"http://{lb['DNSName']}"
    settled = requests.get(f"{base}/", timeout=5).text
    elb.register_targets(TargetGroupArn=tg, Targets=[{"Id": ips[1]}])
    wait_health(elb, tg, "healthy", 2)
    # Seconds into a 30 s slow start, the new target takes a small share, not half.
    bodies = [requests.get(f"{base}/", timeout=5).text for _ in range(200)]
    new = sum(b != settled for b in bodies)
    assert 0 < new < 50, new
    elb.delete_load_balancer(LoadBalancerArn=lb["LoadBalancerArn"])
    elb.delete_target_group(TargetGroupArn=tg)
    for a in arns:
        ecs.stop_task(cluster="default", task=a)


def test_a_bridge_mode_service_behind_instance_targets(gantry, elb, ecs):
    """Bridge-mode tasks are `instance` targets: the node's instance id and the host port
    published for the container port (dynamic here), reached at the node's address."""
    from conftest import IMAGE, NETWORK, register
    ecs.create_cluster(clusterName="default")
    td = ecs.register_task_definition(family="lb-bridge", networkMode="bridge", containerDefinitions=[{
        "name": "web", "image": IMAGE, "memory": 64, "command": ["sh", "-c", SERVE.format(colour="bridge")],
        "portMappings": [{"containerPort": 8080, "hostPort": 0}]}])["taskDefinition"]["taskDefinitionArn"]
    tg = elb.create_target_group(Name="e2e-inst", Protocol="HTTP", Port=80, HealthCheckPath="/health",
                                 HealthCheckIntervalSeconds=5, HealthCheckTimeoutSeconds=2)["TargetGroups"][0]
    assert tg["TargetType"] == "instance", "ELBv2's default"
    elb.modify_target_group_attributes(TargetGroupArn=tg["TargetGroupArn"], Attributes=[
        {"Key": "deregistration_delay.timeout_seconds", "Value": "1"}])
    lb = elb.create_load_balancer(Name="e2e-inst", Subnets=subnets())["LoadBalancers"][0]
    elb.create_listener(LoadBalancerArn=lb["LoadBalancerArn"], Protocol="HTTP", Port=80,
                        DefaultActions=[{"Type": "forward", "TargetGroupArn": tg["TargetGroupArn"]}])
    entry = [{"targetGroupArn": tg["TargetGroupArn"], "containerName": "web", "containerPort": 8080}]
    awsvpc = register(ecs, "lb-awsvpc", [{"name": "web", "portMappings": [{"containerPort": 8080}]}])["taskDefinitionArn"]
    code, msg = code_of(ecs.create_service, cluster="default", serviceName="inst", taskDefinition=awsvpc, desiredCount=1,
                        launchType="FARGATE", networkConfiguration=NETWORK, loadBalancers=entry)
    assert code == "InvalidParameterException" and "target type instance" in msg and "awsvpc" in msg
    ecs.create_service(cluster="default", serviceName="inst", taskDefinition=td, desiredCount=2, launchType="EC2",
                       loadBalancers=entry)
    wait_health(elb, tg["TargetGroupArn"], "healthy", 2)
    node = ecs.describe_container_instances(cluster="default", containerInstances=ecs.list_container_instances(
        cluster="default")["containerInstanceArns"])["containerInstances"][0]["ec2InstanceId"]
    targets = [h["Target"] for h in elb.describe_target_health(TargetGroupArn=tg["TargetGroupArn"])["TargetHealthDescriptions"]]
    assert {t["Id"] for t in targets} == {node} and len({t["Port"] for t in targets}) == 2, targets
    bodies = {requests.get(f"http://{lb['DNSName']}/", timeout=5).text for _ in range(6)}
    assert len(bodies) == 2 and all(b.startswith("bridge ") for b in bodies), bodies
    code, msg = code_of(elb.register_targets, TargetGroupArn=tg["TargetGroupArn"], Targets=[{"Id": "i-0123456789abcdef0", "Port": 80}])
    assert code == "InvalidTarget" and "i-0123456789abcdef0" in msg
    ecs.delete_service(cluster="default", service="inst", force=True)
    ecs.get_waiter("services_inactive").wait(cluster="default", services=["inst"], WaiterConfig={"Delay": 1, "MaxAttempts": 60})
    elb.delete_load_balancer(LoadBalancerArn=lb["LoadBalancerArn"])
    elb.delete_target_group(TargetGroupArn=tg["TargetGroupArn"])
