"""The EC2 networking subset with boto3 and awscli unchanged (the default VPC and its subnets,
zones, security groups, their rules and tags, EC2's errors), and security groups enforced at
each awsvpc task: only what a task's groups allow reaches it or leaves it, and rule changes
reach running tasks within a second. Probes run in the tasks' own network namespaces."""
import os
import subprocess
import sys
import urllib.request

import botocore.exceptions
import pytest

from conftest import NETWORK, register, wait_for

SERVE = "httpd -f -p 8080 -h /www & httpd -f -p 9090 -h /www & wait"


@pytest.fixture
def ec2(gantry):
    return gantry.client("ec2")


def code(call, *args, **kw):
    with pytest.raises(botocore.exceptions.ClientError) as e:
        call(*args, **kw)
    return e.value.response["Error"]["Code"], e.value.response["Error"]["Message"]


def test_the_default_vpc_subnets_and_zones_are_the_nodes_networks(gantry, ec2):
    vpcs = ec2.describe_vpcs()["Vpcs"]
    assert len(vpcs) == 1 and vpcs[0]["IsDefault"] and vpcs[0]["CidrBlock"] == "10.217.0.0/24", vpcs
    subnets = ec2.describe_subnets(Filters=[{"Name": "vpc-id", "Values": [vpcs[0]["VpcId"]]}])["Subnets"]
    assert [(s["AvailabilityZone"], s["CidrBlock"], s["AvailableIpAddressCount"]) for s in subnets] == \
        [("us-east-1a", "10.217.0.0/24", 253)]
    assert subnets[0]["SubnetId"].startswith("subnet-") and subnets[0]["DefaultForAz"]
    assert [z["ZoneName"] for z in ec2.describe_availability_zones()["AvailabilityZones"]] == ["us-east-1a"]
    assert code(ec2.describe_subnets, SubnetIds=["subnet-0123456789abcdef0"])[0] == "InvalidSubnetID.NotFound"
    assert code(ec2.describe_vpcs, VpcIds=["vpc-0123456789abcdef0"])[0] == "InvalidVpcID.NotFound"
    # The CLI speaks EC2's dialect unchanged.
    out, _ = gantry.aws("ec2", "describe-vpcs")
    assert out["Vpcs"][0]["VpcId"] == vpcs[0]["VpcId"]


def test_groups_rules_tags_and_ec2s_errors(gantry, ec2):
    default = ec2.describe_security_groups(GroupNames=["default"])["SecurityGroups"][0]
    assert default["IpPermissions"][0]["UserIdGroupPairs"][0]["GroupId"] == default["GroupId"]
    assert default["IpPermissionsEgress"][0]["IpRanges"] == [{"CidrIp": "0.0.0.0/0"}]
    created = ec2.create_security_group(GroupName="api", Description="api tier", TagSpecifications=[
        {"ResourceType": "security-group", "Tags": [{"Key": "team", "Value": "core"}]}])
    api = created["GroupId"]
    assert api.startswith("sg-") and created["Tags"] == [{"Key": "team", "Value": "core"}]
    c, m = code(ec2.create_security_group, GroupName="api", Description="again")
    assert c == "InvalidGroup.Duplicate" and "already exists for VPC" in m
    rule = {"IpProtocol": "tcp", "FromPort": 443, "ToPort": 443,
            "IpRanges": [{"CidrIp": "10.0.0.0/8", "Description": "internal"}]}
    added = ec2.authorize_security_group_ingress(GroupId=api, IpPermissions=[rule])
    assert added["Return"] and added["SecurityGroupRules"][0]["CidrIpv4"] == "10.0.0.0/8"
    c, m = code(ec2.authorize_security_group_ingress, GroupId=api, IpPermissions=[rule])
    assert c == "InvalidPermission.Duplicate" and "peer: 10.0.0.0/8, TCP, from port: 443, to port: 443, ALLOW" in m
    # The flat form, by group name, as older scripts write it.
    ec2.authorize_security_group_ingress(GroupName="api", IpProtocol="udp", FromPort=53, ToPort=53, CidrIp="10.1.0.0/16")
    got = ec2.describe_security_groups(GroupIds=[api])["SecurityGroups"][0]
    perms = {(p["IpProtocol"], p.get("FromPort")): [r["CidrIp"] for r in p["IpRanges"]] for p in got["IpPermissions"]}
    assert perms == {("tcp", 443): ["10.0.0.0/8"], ("udp", 53): ["10.1.0.0/16"]}
    for bad, want in [({**rule, "IpRanges": [{"CidrIp": "10.0.0.0/33"}]}, "InvalidParameterValue"),
                      ({**rule, "FromPort": 500, "ToPort": 400}, "InvalidParameterValue"),
                      ({**rule, "IpProtocol": "gre"}, "InvalidParameterValue"),
                      ({"IpProtocol": "tcp", "FromPort": 1, "ToPort": 1,
                        "UserIdGroupPairs": [{"GroupId": "sg-0123456789abcdef0"}]}, "InvalidGroup.NotFound")]:
        assert code(ec2.authorize_security_group_ingress, GroupId=api, IpPermissions=[bad])[0] == want, bad
    ec2.revoke_security_group_ingress(GroupId=api, IpPermissions=[rule])
    assert code(ec2.revoke_security_group_ingress, GroupId=api, IpPermissions=[rule])[0] == "InvalidPermission.NotFound"
    # Tags.
    ec2.create_tags(Resources=[api], Tags=[{"Key": "env", "Value": "prod"}])
    tags = ec2.describe_tags(Filters=[{"Name": "resource-id", "Values": [api]}])["Tags"]
    assert sorted((t["Key"], t["Value"]) for t in tags) == [("env", "prod"), ("team", "core")]
    ec2.delete_tags(Resources=[api], Tags=[{"Key": "team"}])
    found = ec2.describe_security_groups(Filters=[{"Name": "tag:env", "Values": ["prod"]}])["SecurityGroups"]
    assert [g["GroupId"] for g in found] == [api] and found[0]["Tags"] == [{"Key": "env", "Value": "prod"}]
    # A group another group's rule references cannot go; the default group never.
    ref = ec2.create_security_group(GroupName="ref", Description="references api")["GroupId"]
    ec2.authorize_security_group_ingress(GroupId=ref, IpPermissions=[
        {"IpProtocol": "-1", "UserIdGroupPairs": [{"GroupId": api}]}])
    assert code(ec2.delete_security_group, GroupId=api)[0] == "DependencyViolation"
    assert code(ec2.delete_security_group, GroupId=default["GroupId"])[0] == "CannotDelete"
    ec2.delete_security_group(GroupId=ref)
    ec2.delete_security_group(GroupId=api)
    assert code(ec2.describe_security_groups, GroupIds=[api])[0] == "InvalidGroup.NotFound"
    assert code(ec2.describe_security_groups, GroupIds=["web"])[0] == "InvalidGroup.NotFound"
    assert code(ec2.delete_security_group, GroupId="web")[0] == "InvalidGroupId.Malformed"
    assert code(ec2.describe_security_groups, DryRun=True)[0] == "DryRunOperation"


def netns_of(gantry, ip):
    """The network namespace holding `ip` (the task's own)."""
    d = f"{gantry.dir}/run/netns"
    for n in os.listdir(d):
        out = subprocess.run(["nsenter", f"--net={d}/{n}", "ip", "-4", "-o", "addr"], capture_output=True, text=True).stdout
        if f" {ip}/" in out:
            return f"{d}/{n}"
    raise AssertionError(f"no namespace holds {ip}")


# Connects until it succeeds or `wait` seconds pass; prints the seconds it took.
CONNECT = """
import socket, sys, time
start = time.time()
while True:
    try:
        socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=0.2).close()
        print(time.time() - start)
        sys.exit(0)
    except OSError:
        if time.time() - start > float(sys.argv[3]):
            sys.exit(1)
        time.sleep(0.02)
"""


def reach(ns, ip, port, wait=0.0):
    """Seconds until a TCP connection from namespace `ns` to ip:port succeeded, None if not."""
    p = subprocess.run(["nsenter", f"--net={ns}", sys.executable, "-c", CONNECT, ip, str(port), str(wait)],
                       capture_output=True, text=True)
    return float(p.stdout) if p.returncode == 0 else None


def ip_of(ecs, arn):
    t = ecs.describe_tasks(cluster="sg", tasks=[arn])["tasks"][0]
    return next(d["value"] for d in t["attachments"][0]["details"] if d["name"] == "privateIPv4Address")


def test_security_groups_decide_what_reaches_a_task_and_changes_apply_within_a_second(gantry, ec2):
    ecs = gantry.client("ecs")
    ecs.create_cluster(clusterName="sg")
    srv = ec2.create_security_group(GroupName="srv", Description="server")["GroupId"]
    ok = ec2.create_security_group(GroupName="cli-ok", Description="allowed client")["GroupId"]
    no = ec2.create_security_group(GroupName="cli-no", Description="other client")["GroupId"]
    from_ok = [{"IpProtocol": "tcp", "FromPort": 8080, "ToPort": 8080, "UserIdGroupPairs": [{"GroupId": ok}]}]
    ec2.authorize_security_group_ingress(GroupId=srv, IpPermissions=from_ok)
    register(ecs, "sg-server", [{"name": "web", "command": ["sh", "-c", SERVE]}])
    register(ecs, "sg-client", [{"name": "c", "command": ["sleep", "600"]}])

    def start(td, groups):
        net = {"awsvpcConfiguration": {**NETWORK["awsvpcConfiguration"], "securityGroups": groups}}
        r = ecs.run_task(cluster="sg", taskDefinition=td, launchType="FARGATE", networkConfiguration=net)
        return r["tasks"][0]["taskArn"]
    arns = {"srv": start("sg-server", [srv]), "ok": start("sg-client", [ok]), "no": start("sg-client", [no]),
            "dflt": start("sg-client", [])}
    ecs.get_waiter("tasks_running").wait(cluster="sg", tasks=list(arns.values()), WaiterConfig={"Delay": 1, "MaxAttempts": 60})
    ips = {k: ip_of(ecs, a) for k, a in arns.items()}
    ns = {k: netns_of(gantry, ip) for k, ip in ips.items()}
    assert reach(ns["ok"], ips["srv"], 8080, wait=5) is not None, "an allowed group's task connects"
    assert reach(ns["ok"], ips["srv"], 9090) is None, "only the allowed port"
    assert reach(ns["no"], ips["srv"], 8080) is None, "another group's task does not"
    assert reach(ns["dflt"], ips["srv"], 8080) is None, "nor does a default-group task"
    # The node itself (load balancers, health checks) reaches the task on any port.
    assert urllib.request.urlopen(f"http://{ips['srv']}:9090/", timeout=5).read() == b"hello from gantry httpd\n"
    # The task's group lists it as a dependency.
    assert code(ec2.delete_security_group, GroupId=srv)[0] == "DependencyViolation"

    # A new rule reaches the running task within a second; revoking it closes the door again.
    from_no = [{"IpProtocol": "tcp", "FromPort": 8080, "ToPort": 8080, "UserIdGroupPairs": [{"GroupId": no}]}]
    ec2.authorize_security_group_ingress(GroupId=srv, IpPermissions=from_no)
    took = reach(ns["no"], ips["srv"], 8080, wait=5)
    assert took is not None and took < 1.0, f"the new rule took {took} s"
    ec2.revoke_security_group_ingress(GroupId=srv, IpPermissions=from_no)
    wait_for("the revoked rule to close", lambda: reach(ns["no"], ips["srv"], 8080) is None, 5, poll=0.05)
    # Egress: cli-ok may no longer send anything out but to the node.
    everything = [{"IpProtocol": "-1", "IpRanges": [{"CidrIp": "0.0.0.0/0"}]}]
    ec2.revoke_security_group_egress(GroupId=ok, IpPermissions=everything)
    wait_for("egress to close", lambda: reach(ns["ok"], ips["srv"], 8080) is None, 5, poll=0.05)
    ec2.authorize_security_group_egress(GroupId=ok, IpPermissions=everything)
    assert reach(ns["ok"], ips["srv"], 8080, wait=5) is not None

    # RunTask refuses a group that does not exist.
    bad = {"awsvpcConfiguration": {**NETWORK["awsvpcConfiguration"], "securityGroups": ["sg-0123456789abcdef0"]}}
    c, m = code(ecs.run_task, cluster="sg", taskDefinition="sg-client", launchType="FARGATE", networkConfiguration=bad)
    assert c == "InvalidParameterException"
    assert m.startswith("Error retrieving security group information for [sg-0123456789abcdef0]: "
                        "The security group 'sg-0123456789abcdef0' does not exist"), m
    for a in arns.values():
        ecs.stop_task(cluster="sg", task=a)


def refused(url):
    """True when the load balancer closes the connection without an answer."""
    import requests
    try:
        requests.get(url, timeout=5)
        return False
    except requests.ConnectionError:
        return True


def test_a_load_balancers_groups_decide_who_reaches_it_and_which_tasks_it_reaches(gantry, ec2):
    import time
    import requests
    from conftest import subnets
    ecs, elb = gantry.client("ecs"), gantry.client("elbv2")
    ecs.create_cluster(clusterName="sg")
    front = ec2.create_security_group(GroupName="lb-front", Description="load balancer")["GroupId"]
    app = ec2.create_security_group(GroupName="lb-app", Description="behind the load balancer")["GroupId"]
    host = [{"IpProtocol": "tcp", "FromPort": 80, "ToPort": 80, "IpRanges": [{"CidrIp": "127.0.0.1/32"}]}]
    ec2.authorize_security_group_ingress(GroupId=front, IpPermissions=host)
    register(ecs, "sg-lb-app", [{"name": "web", "command": ["sh", "-c", SERVE]}])
    net = {"awsvpcConfiguration": {**NETWORK["awsvpcConfiguration"], "securityGroups": [app]}}
    arn = ecs.run_task(cluster="sg", taskDefinition="sg-lb-app", launchType="FARGATE",
                       networkConfiguration=net)["tasks"][0]["taskArn"]
    ecs.get_waiter("tasks_running").wait(cluster="sg", tasks=[arn], WaiterConfig={"Delay": 1, "MaxAttempts": 60})
    tg = elb.create_target_group(Name="sg-lb-app", Protocol="HTTP", Port=8080, TargetType="ip",
                                 HealthCheckIntervalSeconds=5, HealthCheckTimeoutSeconds=2, HealthyThresholdCount=2,
                                 UnhealthyThresholdCount=2)["TargetGroups"][0]["TargetGroupArn"]
    elb.register_targets(TargetGroupArn=tg, Targets=[{"Id": ip_of(ecs, arn)}])
    lb = elb.create_load_balancer(Name="sg-lb", Subnets=subnets(), SecurityGroups=[front])["LoadBalancers"][0]
    elb.create_listener(LoadBalancerArn=lb["LoadBalancerArn"], Protocol="HTTP", Port=80,
                        DefaultActions=[{"Type": "forward", "TargetGroupArn": tg}])
    url = f"http://{lb['DNSName']}/"

    def health():
        return elb.describe_target_health(TargetGroupArn=tg)["TargetHealthDescriptions"][0]["TargetHealth"]

    # The task's group does not let the load balancer in: its checks time out, requests get
    # ALB's 504 (the task itself is reachable from the node: the groups decide, not the route).
    wait_for("the target to fail its checks", lambda: health()["State"] == "unhealthy", 40)
    assert health()["Reason"] == "Target.Timeout", health()
    assert requests.get(url, timeout=5).status_code == 504
    ip = ip_of(ecs, arn)
    assert urllib.request.urlopen(f"http://{ip}:8080/", timeout=5).read() == b"hello from gantry httpd\n"
    # Letting the load balancer's group in on the traffic port.
    from_front = [{"IpProtocol": "tcp", "FromPort": 8080, "ToPort": 8080, "UserIdGroupPairs": [{"GroupId": front}]}]
    ec2.authorize_security_group_ingress(GroupId=app, IpPermissions=from_front)
    wait_for("the target to pass its checks", lambda: health()["State"] == "healthy", 40)
    assert requests.get(url, timeout=5).text == "hello from gantry httpd\n"

    # The load balancer's own group lets in only 127.0.0.1 on port 80; revoking that closes
    # the listener to this host within a second, a rule for another block does not reopen it.
    ec2.revoke_security_group_ingress(GroupId=front, IpPermissions=host)
    wait_for("the listener to refuse", lambda: refused(url), 1, poll=0.05)
    other = [{"IpProtocol": "tcp", "FromPort": 80, "ToPort": 80, "IpRanges": [{"CidrIp": "10.0.0.0/8"}]}]
    ec2.authorize_security_group_ingress(GroupId=front, IpPermissions=other)
    time.sleep(0.5)
    assert refused(url)
    ec2.authorize_security_group_ingress(GroupId=front, IpPermissions=host)
    wait_for("the listener to serve again", lambda: not refused(url), 1, poll=0.05)
    # SetSecurityGroups swaps the load balancer's groups: one that lets nobody in closes it.
    closed = ec2.create_security_group(GroupName="lb-closed", Description="nothing in")["GroupId"]
    lb_arn = lb["LoadBalancerArn"]
    assert elb.set_security_groups(LoadBalancerArn=lb_arn, SecurityGroups=[closed])["SecurityGroupIds"] == [closed]
    assert elb.describe_load_balancers(LoadBalancerArns=[lb_arn])["LoadBalancers"][0]["SecurityGroups"] == [closed]
    wait_for("the listener to refuse", lambda: refused(url), 1, poll=0.05)
    for groups, want in (([], "InvalidConfigurationRequest"), (["sg-0123456789abcdef0"], "InvalidSecurityGroup")):
        assert code(elb.set_security_groups, LoadBalancerArn=lb_arn, SecurityGroups=groups)[0] == want
    # The task lets in the load balancer's group, which it is no longer in: its checks fail.
    wait_for("the target to fail its checks", lambda: health()["State"] == "unhealthy", 40)
    elb.set_security_groups(LoadBalancerArn=lb_arn, SecurityGroups=[front])
    wait_for("the listener to serve again", lambda: not refused(url), 1, poll=0.05)
    ec2.delete_security_group(GroupId=closed)
    # The load balancer's group is in use.
    assert code(ec2.delete_security_group, GroupId=front)[0] == "DependencyViolation"
    elb.delete_load_balancer(LoadBalancerArn=lb["LoadBalancerArn"])
    elb.delete_target_group(TargetGroupArn=tg)
    ecs.stop_task(cluster="sg", task=arn)
    ecs.get_waiter("tasks_stopped").wait(cluster="sg", tasks=[arn], WaiterConfig={"Delay": 1, "MaxAttempts": 60})
    ec2.revoke_security_group_ingress(GroupId=app, IpPermissions=from_front)
    for g in (app, front):
        ec2.delete_security_group(GroupId=g)
