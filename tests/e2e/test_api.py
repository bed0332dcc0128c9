"""Clusters, task definitions, tags, account settings, errors and authentication, through
boto3 and the AWS CLI."""
import pytest
import requests
from botocore.exceptions import ClientError

from conftest import ACCOUNT, IMAGE, NETWORK, register


def error_code(excinfo):
    return excinfo.value.response["Error"]["Code"]


def test_cli_profile_free_calls(gantry):
    out, _ = gantry.aws("ecs", "create-cluster", "--cluster-name", "cli")
    assert out["cluster"]["clusterArn"] == f"arn:aws:ecs:us-east-1:{ACCOUNT}:cluster/cli"
    out, _ = gantry.aws("ecs", "list-clusters")
    assert f"arn:aws:ecs:us-east-1:{ACCOUNT}:cluster/cli" in out["clusterArns"]


def test_cluster_lifecycle(ecs):
    c = ecs.create_cluster(clusterName="life", tags=[{"key": "team", "value": "a"}])["cluster"]
    assert (c["status"], c["clusterName"]) == ("ACTIVE", "life")
    again = ecs.create_cluster(clusterName="life")["cluster"]
    assert again["clusterArn"] == c["clusterArn"], "CreateCluster is idempotent"
    d = ecs.describe_clusters(clusters=["life", "nope"], include=["STATISTICS", "TAGS"])
    assert [x["clusterName"] for x in d["clusters"]] == ["life"]
    assert d["clusters"][0]["tags"] == [{"key": "team", "value": "a"}]
    stats = {s["name"]: s["value"] for s in d["clusters"][0]["statistics"]}
    assert stats["runningFargateTasksCount"] == "0"
    assert d["failures"] == [{"arn": f"arn:aws:ecs:us-east-1:{ACCOUNT}:cluster/nope", "reason": "MISSING"}]
    u = ecs.update_cluster(cluster="life", settings=[{"name": "containerInsights", "value": "enabled"}])["cluster"]
    assert {"name": "containerInsights", "value": "enabled"} in u["settings"]
    ecs.tag_resource(resourceArn=c["clusterArn"], tags=[{"key": "env", "value": "dev"}])
    ecs.untag_resource(resourceArn=c["clusterArn"], tagKeys=["team"])
    assert ecs.list_tags_for_resource(resourceArn=c["clusterArn"])["tags"] == [{"key": "env", "value": "dev"}]
    assert ecs.delete_cluster(cluster="life")["cluster"]["status"] == "INACTIVE"
    assert c["clusterArn"] not in ecs.list_clusters()["clusterArns"]
    with pytest.raises(ClientError) as e:
        ecs.delete_cluster(cluster="life")
    assert error_code(e) == "ClusterNotFoundException"
    with pytest.raises(ClientError) as e:
        ecs.create_cluster(clusterName="bad name!")
    assert error_code(e) == "InvalidParameterException"


def test_list_clusters_paginates(ecs):
    for i in range(5):
        ecs.create_cluster(clusterName=f"page-{i}")
    pages = list(ecs.get_paginator("list_clusters").paginate(PaginationConfig={"PageSize": 2}))
    arns = [a for p in pages for a in p["clusterArns"]]
    assert len(pages) >= 3
    assert len(arns) == len(set(arns))
    assert all(any(a.endswith(f"cluster/page-{i}") for a in arns) for i in range(5))


def test_task_definition_revisions_and_lookup(ecs):
    a = register(ecs, "revs", [{"name": "app", "command": ["true"]}])
    b = register(ecs, "revs", [{"name": "app", "command": ["false"]}], cpu="1 vCPU", memory="2 GB")
    assert (a["revision"], b["revision"]) == (1, 2)
    assert (b["cpu"], b["memory"]) == ("1024", "2048"), "sizes are normalised"
    assert b["compatibilities"] == ["EC2", "FARGATE"] and b["status"] == "ACTIVE"
    assert b["containerDefinitions"][0]["essential"] is True
    assert ecs.describe_task_definition(taskDefinition="revs")["taskDefinition"]["revision"] == 2
    assert ecs.describe_task_definition(taskDefinition="revs:1")["taskDefinition"]["containerDefinitions"][0]["command"] == ["true"]
    assert ecs.describe_task_definition(taskDefinition=a["taskDefinitionArn"])["taskDefinition"]["revision"] == 1
    pages = list(ecs.get_paginator("list_task_definitions").paginate(familyPrefix="revs", PaginationConfig={"PageSize": 1}))
    assert [p["taskDefinitionArns"] for p in pages if p["taskDefinitionArns"]] == [[a["taskDefinitionArn"]], [b["taskDefinitionArn"]]]
    desc = ecs.list_task_definitions(familyPrefix="revs", sort="DESC")["taskDefinitionArns"]
    assert desc == [b["taskDefinitionArn"], a["taskDefinitionArn"]]
    assert "revs" in ecs.list_task_definition_families(familyPrefix="rev")["families"]
    d = ecs.deregister_task_definition(taskDefinition="revs:2")["taskDefinition"]
    assert d["status"] == "INACTIVE" and "deregisteredAt" in d
    assert ecs.describe_task_definition(taskDefinition="revs")["taskDefinition"]["revision"] == 1
    assert ecs.list_task_definitions(familyPrefix="revs", status="INACTIVE")["taskDefinitionArns"] == [b["taskDefinitionArn"]]
    r = ecs.delete_task_definitions(taskDefinitions=["revs:2", "revs:1"])
    assert [x["status"] for x in r["taskDefinitions"]] == ["DELETE_IN_PROGRESS"]
    assert len(r["failures"]) == 1 and "ACTIVE" in r["failures"][0]["reason"]
    with pytest.raises(ClientError) as e:
        ecs.describe_task_definition(taskDefinition="no-such-family")
    assert error_code(e) == "ClientException"


BAD_DEFINITIONS = [
    ({"cpu": "256", "memory": "4096"}, "No Fargate configuration exists"),
    ({"cpu": "300", "memory": "512"}, "No Fargate configuration exists"),
    ({"networkMode": "bridge"}, "awsvpc"),
    ({"containerDefinitions": []}, "Container list cannot be empty"),
    ({"containerDefinitions": [{"name": "a", "image": IMAGE, "essential": False}]}, "at least one essential"),
    ({"containerDefinitions": [{"name": "a", "image": IMAGE, "cpu": 512}]}, "sum of container cpu"),
    ({"containerDefinitions": [{"name": "a", "image": IMAGE, "memory": 1024}]}, "sum of container memory"),
    ({"containerDefinitions": [{"name": "a", "image": IMAGE, "stopTimeout": 1}]}, "stopTimeout"),
    ({"containerDefinitions": [{"name": "a", "image": IMAGE, "healthCheck": {"command": ["CMD-SHELL", "true"], "retries": 11}}]}, "retries"),
    ({"containerDefinitions": [{"name": "a", "image": IMAGE, "dependsOn": [{"containerName": "zz", "condition": "START"}]}]}, "not in the task definition"),
    ({"containerDefinitions": [{"name": "a", "image": IMAGE}, {"name": "b", "image": IMAGE, "dependsOn": [{"containerName": "a", "condition": "SUCCESS"}]}]}, "essential container a"),
    ({"containerDefinitions": [{"name": "a", "image": IMAGE}, {"name": "b", "image": IMAGE, "dependsOn": [{"containerName": "a", "condition": "HEALTHY"}]}]}, "health check"),
    ({"containerDefinitions": [{"name": f"c{i}", "image": IMAGE} for i in range(11)]}, "at most 10"),
    ({"ephemeralStorage": {"sizeInGiB": 201}}, "between 21 and 200"),
    ({"family": "bad family"}, "Family contains invalid characters"),
]


@pytest.mark.parametrize("change,message", BAD_DEFINITIONS)
def test_invalid_task_definitions_are_refused(ecs, change, message):
    req = {"family": "bad", "networkMode": "awsvpc", "requiresCompatibilities": ["FARGATE"], "cpu": "256", "memory": "512",
           "containerDefinitions": [{"name": "a", "image": IMAGE}]}
    req.update(change)
    with pytest.raises(ClientError) as e:
        ecs.register_task_definition(**req)
    assert error_code(e) == "ClientException"
    assert message in e.value.response["Error"]["Message"]
    assert e.value.response["ResponseMetadata"]["HTTPStatusCode"] == 400


def test_run_task_request_errors(ecs):
    register(ecs, "reqerr", [{"name": "a", "command": ["true"]}])
    base = {"cluster": "default", "taskDefinition": "reqerr",
            "networkConfiguration": NETWORK}
    for change, code in [({"count": 11}, "InvalidParameterException"),
                         ({"networkConfiguration": None}, "InvalidParameterException"),
                         ({"launchType": "EXTERNAL"}, "ClientException"),
                         ({"cluster": "no-such-cluster", "count": 11}, "ClusterNotFoundException"),
                         ({"taskDefinition": "missing-family"}, "ClientException"),
                         ({"cluster": "no-such-cluster"}, "ClusterNotFoundException"),
                         ({"overrides": {"containerOverrides": [{"name": "ghost", "command": ["x"]}]}}, "InvalidParameterException"),
                         ({"launchType": "FARGATE", "capacityProviderStrategy": [{"capacityProvider": "FARGATE"}]}, "InvalidParameterException")]:
        req = {k: v for k, v in {**base, **change}.items() if v is not None}
        with pytest.raises(ClientError) as e:
            ecs.run_task(**req)
        assert error_code(e) == code, (change, e.value.response["Error"])
    # Subnets are the default VPC's, as EC2 has them; a task's ENI is in its node's.
    with pytest.raises(ClientError) as e:
        ecs.run_task(**dict(base, networkConfiguration={"awsvpcConfiguration": {"subnets": ["subnet-0nope"]}}))
    assert error_code(e) == "InvalidParameterException"
    assert "The subnet ID 'subnet-0nope' does not exist" in e.value.response["Error"]["Message"]
    subnet = NETWORK["awsvpcConfiguration"]["subnets"][0]
    task = ecs.run_task(**dict(base, networkConfiguration={"awsvpcConfiguration": {"subnets": [subnet, subnet]}}))["tasks"][0]
    details = {d["name"]: d["value"] for d in task["attachments"][0]["details"]}
    assert details["subnetId"] == subnet
    with pytest.raises(ClientError) as e:
        ecs.create_service(cluster="default", serviceName="bad-subnet", taskDefinition="reqerr", desiredCount=0,
                           networkConfiguration={"awsvpcConfiguration": {"subnets": ["subnet-0nope"]}})
    assert error_code(e) == "InvalidParameterException"
    with pytest.raises(ClientError) as e:
        ecs.describe_tasks(cluster="default", tasks=[])
    assert error_code(e) == "InvalidParameterException"
    d = ecs.describe_tasks(cluster="default", tasks=["0" * 32])
    assert d["failures"][0]["reason"] == "MISSING"


def test_capacity_providers_and_account_settings(ecs):
    names = [c["name"] for c in ecs.describe_capacity_providers()["capacityProviders"]]
    # Fargate's two come first; other modules on the same gantry may have made their own.
    assert names[:2] == ["FARGATE", "FARGATE_SPOT"], names
    root = f"arn:aws:iam::{ACCOUNT}:root"
    s = ecs.put_account_setting(name="containerInsights", value="enabled")["setting"]
    assert (s["value"], s["principalArn"]) == ("enabled", root)
    # Without effectiveSettings only explicit settings are listed; with it, every setting.
    got = {x["name"]: x["value"] for x in ecs.list_account_settings()["settings"]}
    assert got == {"containerInsights": "enabled"}
    eff = ecs.list_account_settings(effectiveSettings=True, maxResults=10)
    got = {x["name"]: x["value"] for x in eff["settings"]}
    assert got["containerInsights"] == "enabled" and got["taskLongArnFormat"] == "enabled" and "nextToken" not in eff
    page = ecs.list_account_settings(effectiveSettings=True, maxResults=3)
    assert len(page["settings"]) == 3 and page["nextToken"]
    rest = ecs.list_account_settings(effectiveSettings=True, maxResults=10, nextToken=page["nextToken"])["settings"]
    assert len(page["settings"]) + len(rest) == len(eff["settings"])
    # A role's own setting overrides the account default; deleting it falls back.
    role = root.replace(":root", ":role/app")
    ecs.put_account_setting_default(name="awsvpcTrunking", value="enabled")
    ecs.put_account_setting(name="awsvpcTrunking", value="disabled", principalArn=role)
    one = lambda p: ecs.list_account_settings(name="awsvpcTrunking", principalArn=p, effectiveSettings=True)["settings"][0]["value"]
    assert (one(role), one(root)) == ("disabled", "enabled")
    assert ecs.list_account_settings(name="awsvpcTrunking", value="disabled", principalArn=role)["settings"][0]["principalArn"] == role
    d = ecs.delete_account_setting(name="awsvpcTrunking", principalArn=role)["setting"]
    assert d["value"] == "disabled" and one(role) == "enabled"
    ecs.delete_account_setting(name="awsvpcTrunking")
    ecs.delete_account_setting(name="containerInsights")
    assert one(root) == "disabled"
    for bad in [dict(name="notASetting", value="x"), dict(name="containerInsights", value="maybe"),
                dict(name="containerInsights", value="enabled", principalArn="arn:aws:iam::999999999999:root"),
                dict(name="containerInsights", value="enabled", principalArn="not-an-arn")]:
        with pytest.raises(ClientError) as e:
            ecs.put_account_setting(**bad)
        assert error_code(e) == "InvalidParameterException", bad
    with pytest.raises(ClientError) as e:
        ecs.delete_account_setting(name="containerInsights")
    assert error_code(e) == "InvalidParameterException"
    with pytest.raises(ClientError) as e:
        ecs.list_account_settings(value="enabled")
    assert error_code(e) == "InvalidParameterException"


def test_unsigned_and_badly_signed_requests_are_refused(gantry):
    r = requests.post(gantry.endpoint, data="{}", headers={"X-Amz-Target": "AmazonEC2ContainerServiceV20141113.ListClusters",
                                                          "Content-Type": "application/x-amz-json-1.1"})
    assert r.status_code == 403 and r.json()["__type"] == "MissingAuthenticationTokenException"
    for kw, code in [({"secret": "wrong-secret"}, "InvalidSignatureException"),
                     ({"key": "AKIDUNKNOWN00000000"}, "UnrecognizedClientException")]:
        with pytest.raises(ClientError) as e:
            gantry.client("ecs", **kw).list_clusters()
        assert error_code(e) == code
    # Clock skew beyond 15 minutes: a correct signature over a 20-minute-old date.
    import datetime
    import botocore.auth
    import botocore.awsrequest
    import botocore.credentials
    from conftest import KEY, SECRET
    req = botocore.awsrequest.AWSRequest(method="POST", url=gantry.endpoint + "/", data=b"{}",
                                         headers={"X-Amz-Target": "AmazonEC2ContainerServiceV20141113.ListClusters",
                                                  "Content-Type": "application/x-amz-json-1.1"})
    auth = botocore.auth.SigV4Auth(botocore.credentials.Credentials(KEY, SECRET), "ecs", "us-east-1")
    old = (datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(minutes=20)).strftime("%Y%m%dT%H%M%SZ")
    req.context["timestamp"] = old
    req.headers["X-Amz-Date"] = old
    signed = auth.signed_headers(auth.headers_to_sign(req))
    sig = auth.signature(auth.string_to_sign(req, auth.canonical_request(req)), req)
    req.headers["Authorization"] = (f"AWS4-HMAC-SHA256 Credential={KEY}/{old[:8]}/us-east-1/ecs/aws4_request, "
                                    f"SignedHeaders={signed}, Signature={sig}")
    r = requests.post(gantry.endpoint + "/", data=b"{}", headers=dict(req.headers))
    assert r.status_code == 400 and r.json()["__type"] == "InvalidSignatureException", r.text
    assert "Signature expired" in r.json()["message"]


def test_unknown_operation(gantry):
    ecs = gantry.client("ecs")
    with pytest.raises(ClientError) as e:
        ecs.discover_poll_endpoint(containerInstance="none")
    assert error_code(e) == "InvalidAction"


def test_resources_are_scoped_per_region(gantry):
    east = gantry.client("ecs")
    import boto3
    from conftest import KEY, SECRET
    west = boto3.client("ecs", endpoint_url=gantry.endpoint, region_name="us-west-2", aws_access_key_id=KEY, aws_secret_access_key=SECRET)
    east.create_cluster(clusterName="scoped-east")
    assert not any(a.endswith("/scoped-east") for a in west.list_clusters()["clusterArns"])
    c = west.create_cluster(clusterName="scoped-west")["cluster"]
    assert c["clusterArn"].startswith("arn:aws:ecs:us-west-2:")
    assert not any(a.endswith("/scoped-west") for a in east.list_clusters()["clusterArns"])


def test_dev_writes_a_working_aws_profile(tmp_path):
    """A fresh `gantry dev` merges a `gantry` profile into the AWS files, keeping the others,
    and `aws --profile gantry` works with nothing else set."""
    import os
    import subprocess
    from conftest import AWS, Gantry
    creds, conf = tmp_path / "credentials", tmp_path / "config"
    creds.write_text("[default]\naws_access_key_id = KEEP\naws_secret_access_key = ME\n")
    conf.write_text("[profile other]\nregion = eu-west-1\n")
    g = Gantry(instance=2)
    for k in ("GANTRY_ACCESS_KEY_ID", "GANTRY_SECRET_ACCESS_KEY", "GANTRY_ACCOUNT_ID"):
        g.env.pop(k, None)
    g.env.update(AWS_SHARED_CREDENTIALS_FILE=str(creds), AWS_CONFIG_FILE=str(conf))
    log = open(os.path.join(g.dir, "dev.log"), "a")
    from conftest import GANTRY
    g.proc = subprocess.Popen([GANTRY, *g.node_args, "dev", "--listen", f"127.0.0.1:{g.port}"],
                              env=g.env, stdout=log, stderr=subprocess.STDOUT)
    try:
        import socket
        import time
        deadline = time.time() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", g.port), timeout=0.2).close()
                break
            except OSError:
                assert time.time() < deadline, g.log()
                time.sleep(0.05)
        assert "aws_access_key_id = KEEP" in creds.read_text() and "[gantry]" in creds.read_text()
        assert "[profile other]" in conf.read_text() and f"endpoint_url = http://127.0.0.1:{g.port}" in conf.read_text()
        env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
        env.update(AWS_SHARED_CREDENTIALS_FILE=str(creds), AWS_CONFIG_FILE=str(conf))
        p = subprocess.run([AWS, "--profile", "gantry", "ecs", "list-clusters"], capture_output=True, text=True, env=env)
        assert p.returncode == 0, p.stderr
        assert '"clusterArns"' in p.stdout
    finally:
        g.cleanup()


def signed_post(gantry, body, target="AmazonEC2ContainerServiceV20141113.ListClusters"):
    import botocore.auth
    import botocore.awsrequest
    import botocore.credentials
    from conftest import KEY, SECRET
    req = botocore.awsrequest.AWSRequest(method="POST", url=gantry.endpoint + "/", data=body,
                                         headers={"X-Amz-Target": target, "Content-Type": "application/x-amz-json-1.1"})
    botocore.auth.SigV4Auth(botocore.credentials.Credentials(KEY, SECRET), "ecs", "us-east-1").add_auth(req)
    return requests.post(gantry.endpoint + "/", data=body, headers=dict(req.headers))


def test_malformed_oversized_and_unknown_requests_get_aws_errors(gantry):
    r = signed_post(gantry, b"{not json")
    assert r.status_code == 400 and r.json()["__type"] == "SerializationException", r.text
    r = signed_post(gantry, b"[1, 2]")
    assert r.status_code == 400 and r.json()["__type"] == "SerializationException"
    r = signed_post(gantry, b'{"clusterName": 5}', target="AmazonEC2ContainerServiceV20141113.CreateCluster")
    assert r.status_code == 400 and r.json()["__type"] == "InvalidParameterException", r.text
    big = b'{"clusterName": "' + b"a" * (2 << 20) + b'"}'
    r = signed_post(gantry, big, target="AmazonEC2ContainerServiceV20141113.CreateCluster")
    assert r.status_code == 413 and r.json()["__type"] == "RequestEntityTooLargeException", r.text[:200]
    r = signed_post(gantry, b"{}", target="NoSuchService_2020.DoThing")
    assert r.status_code == 400 and r.json()["__type"] == "UnknownOperationException"
    r = signed_post(gantry, b'{"family": "x"}', target="AmazonEC2ContainerServiceV20141113.RegisterTaskDefinition")
    assert r.status_code == 400 and r.json()["__type"] == "ClientException" and r.json()["message"]


def test_describe_clusters_include_counts_filters_and_error_precedence(ecs):
    from conftest import NETWORK
    ecs.create_cluster(clusterName="shapes", tags=[{"key": "k", "value": "v"}])
    register(ecs, "shape-fg", [{"name": "a", "command": ["sh", "-c", "trap 'exit 0' TERM; while :; do sleep 0.1; done"], "stopTimeout": 2}])
    ecs.register_task_definition(family="shape-ec2", containerDefinitions=[
        {"name": "a", "image": IMAGE, "memory": 32, "stopTimeout": 2,
         "command": ["sh", "-c", "trap 'exit 0' TERM; while :; do sleep 0.1; done"]}])
    fg = ecs.run_task(cluster="shapes", taskDefinition="shape-fg", launchType="FARGATE", networkConfiguration=NETWORK,
                      startedBy="me")["tasks"][0]["taskArn"]
    ec2 = ecs.run_task(cluster="shapes", taskDefinition="shape-ec2")["tasks"][0]["taskArn"]
    ecs.create_service(cluster="shapes", serviceName="s-ec2", taskDefinition="shape-ec2", desiredCount=1)
    ecs.get_waiter("tasks_running").wait(cluster="shapes", tasks=[fg, ec2], WaiterConfig={"Delay": 1, "MaxAttempts": 60})
    ecs.get_waiter("services_stable").wait(cluster="shapes", services=["s-ec2"], WaiterConfig={"Delay": 1, "MaxAttempts": 60})
    # Optional parts only when asked for; counts are real.
    plain = ecs.describe_clusters(clusters=["shapes"])["clusters"][0]
    assert "settings" not in plain and "tags" not in plain and "statistics" not in plain, plain
    assert (plain["runningTasksCount"], plain["activeServicesCount"]) == (3, 1)
    full = ecs.describe_clusters(clusters=["shapes"], include=["SETTINGS", "STATISTICS", "TAGS"])["clusters"][0]
    stats = {s["name"]: s["value"] for s in full["statistics"]}
    assert (stats["runningFargateTasksCount"], stats["runningEC2TasksCount"], stats["activeEC2ServiceCount"]) == ("1", "2", "1")
    assert full["settings"] == [{"name": "containerInsights", "value": "disabled"}] and full["tags"] == [{"key": "k", "value": "v"}]
    # ListTasks filters.
    lt = lambda **kw: sorted(ecs.list_tasks(cluster="shapes", **kw)["taskArns"])
    svc_tasks = lt(serviceName="s-ec2")
    assert len(svc_tasks) == 1 and svc_tasks[0] not in (fg, ec2)
    assert lt(launchType="FARGATE") == [fg]
    assert lt(launchType="EC2") == sorted([ec2] + svc_tasks)
    assert lt(family="shape-fg") == [fg] and lt(startedBy="me") == [fg]
    assert lt(containerInstance="arn:aws:ecs:us-east-1:123456789012:container-instance/shapes/none") == []
    with pytest.raises(ClientError) as e:
        ecs.list_tasks(cluster="shapes", startedBy="me", family="shape-fg")
    assert error_code(e) == "InvalidParameterException"
    assert len(ecs.list_services(cluster="shapes", launchType="EC2")["serviceArns"]) == 1
    assert ecs.list_services(cluster="shapes", launchType="FARGATE")["serviceArns"] == []
    assert ecs.list_services(cluster="shapes", schedulingStrategy="DAEMON")["serviceArns"] == []
    # A cluster that does not exist is reported before anything else is looked at.
    for call in [lambda: ecs.describe_tasks(cluster="ghost", tasks=[]),
                 lambda: ecs.stop_task(cluster="ghost", task="x", reason="r" * 300),
                 lambda: ecs.describe_services(cluster="ghost", services=[]),
                 lambda: ecs.list_tasks(cluster="ghost", desiredStatus="STOPPED", startedBy="x"),
                 lambda: ecs.update_service(cluster="ghost", service="nope", desiredCount=-1),
                 lambda: ecs.create_service(cluster="ghost", serviceName="x", taskDefinition="nope", desiredCount=-1)]:
        with pytest.raises(ClientError) as e:
            call()
        assert error_code(e) == "ClusterNotFoundException", e.value.response["Error"]
    with pytest.raises(ClientError) as e:
        ecs.update_service(cluster="shapes", service="nope", desiredCount=-1)
    assert error_code(e) == "ServiceNotFoundException"
    ecs.delete_service(cluster="shapes", service="s-ec2", force=True)
    with pytest.raises(ClientError) as e:
        ecs.update_service(cluster="shapes", service="s-ec2", desiredCount=-1)
    assert error_code(e) == "ServiceNotActiveException"
    for t in (fg, ec2):
        ecs.stop_task(cluster="shapes", task=t)


def test_long_arn_format_settings_change_the_arns_issued(ecs):
    from conftest import NETWORK
    register(ecs, "short-arn", [{"name": "a", "command": ["sh", "-c", "trap 'exit 0' TERM; while :; do sleep 0.1; done"], "stopTimeout": 2}])
    for s in ("taskLongArnFormat", "serviceLongArnFormat", "containerInstanceLongArnFormat"):
        ecs.put_account_setting_default(name=s, value="disabled")
    try:
        ecs.create_cluster(clusterName="shortarn")
        t = ecs.run_task(cluster="shortarn", taskDefinition="short-arn", launchType="FARGATE", networkConfiguration=NETWORK)["tasks"][0]
        tid = t["taskArn"].rsplit("/", 1)[1]
        assert t["taskArn"] == f"arn:aws:ecs:us-east-1:{ACCOUNT}:task/{tid}"
        assert t["containers"][0]["containerArn"].count("/") == 1
        s = ecs.create_service(cluster="shortarn", serviceName="old", taskDefinition="short-arn", desiredCount=0,
                               launchType="FARGATE", networkConfiguration=NETWORK)["service"]
        assert s["serviceArn"] == f"arn:aws:ecs:us-east-1:{ACCOUNT}:service/old"
        ci = ecs.list_container_instances(cluster="shortarn")["containerInstanceArns"][0]
        assert ci.count("/") == 1
        # Short ARNs work everywhere an ARN is taken.
        assert ecs.describe_tasks(cluster="shortarn", tasks=[t["taskArn"]])["tasks"][0]["taskArn"] == t["taskArn"]
        ecs.tag_resource(resourceArn=t["taskArn"], tags=[{"key": "a", "value": "b"}])
        ecs.tag_resource(resourceArn=s["serviceArn"], tags=[{"key": "c", "value": "d"}])
        assert ecs.list_tags_for_resource(resourceArn=t["taskArn"])["tags"] == [{"key": "a", "value": "b"}]
        assert ecs.list_tags_for_resource(resourceArn=s["serviceArn"])["tags"] == [{"key": "c", "value": "d"}]
        ecs.stop_task(cluster="shortarn", task=t["taskArn"])
        ecs.delete_service(cluster="shortarn", service=s["serviceArn"], force=True)
    finally:
        for s in ("taskLongArnFormat", "serviceLongArnFormat", "containerInstanceLongArnFormat"):
            ecs.delete_account_setting(name=s)
    t = ecs.run_task(cluster="shortarn", taskDefinition="short-arn", launchType="FARGATE", networkConfiguration=NETWORK)["tasks"][0]
    assert "/shortarn/" in t["taskArn"]
    ecs.stop_task(cluster="shortarn", task=t["taskArn"])


def test_a_subnet_already_on_another_interface_is_refused():
    """A bridge left by another Gantry (or any interface) in the subnet would take the tasks'
    traffic: gantry dev refuses to start, naming it."""
    import os
    import subprocess
    from conftest import GANTRY, Gantry
    g = Gantry(instance=6)
    dummy = f"gd{os.getpid() % 100000}"  # a bridge: dummy links are not built into this kernel
    subprocess.run(["ip", "link", "add", dummy, "type", "bridge"], check=True)
    try:
        subprocess.run(["ip", "addr", "add", "10.217.6.1/24", "dev", dummy], check=True)
        p = subprocess.run([GANTRY, *g.node_args, "dev", "--listen", f"127.0.0.1:{g.port}", "--no-profile"],
                           env=g.env, capture_output=True, text=True, timeout=60)
        assert p.returncode != 0
        assert f"subnet 10.217.6.0/24 overlaps 10.217.6.1/24 on {dummy}" in p.stderr, p.stderr
    finally:
        subprocess.run(["ip", "link", "del", dummy], check=False)
        g.cleanup()
