"""Cloud Map's API (servicediscovery, AWS JSON 1.1) with boto3 and awscli unchanged: namespaces,
services, instances, custom health, discovery, operations and tags, with Cloud Map's errors.

DiscoverInstances carries the `data-` host prefix in its model; against an endpoint override
clients are told not to inject it (boto3's Config(inject_host_prefix=False), awscli's
AWS_DISABLE_HOST_PREFIX_INJECTION), as for any non-AWS endpoint."""
import botocore.config
import botocore.exceptions
import pytest

from conftest import vpc_of


@pytest.fixture
def sd(gantry):
    return gantry.client("servicediscovery")


@pytest.fixture
def discovery(gantry):
    return gantry.client("servicediscovery", config=botocore.config.Config(inject_host_prefix=False,
                                                                           retries={"max_attempts": 1}))


def code_of(call, *args, **kw):
    with pytest.raises(botocore.exceptions.ClientError) as e:
        call(*args, **kw)
    return e.value.response["Error"]["Code"], e.value.response["Error"]["Message"]


def namespace(sd, name, **kw):
    op = sd.create_private_dns_namespace(Name=name, Vpc=vpc_of(sd), **kw)["OperationId"]
    done = sd.get_operation(OperationId=op)["Operation"]
    assert done["Status"] == "SUCCESS" and done["Type"] == "CREATE_NAMESPACE"
    return done["Targets"]["NAMESPACE"]


def test_namespaces_services_and_their_errors(sd):
    ns = namespace(sd, "api.internal", CreatorRequestId="req-1", Tags=[{"Key": "team", "Value": "core"}],
                   Properties={"DnsProperties": {"SOA": {"TTL": 30}}})
    got = sd.get_namespace(Id=ns)["Namespace"]
    assert got["Name"] == "api.internal" and got["Type"] == "DNS_PRIVATE" and got["ServiceCount"] == 0
    assert got["Properties"]["DnsProperties"]["SOA"]["TTL"] == 30
    assert got["Arn"] == f"arn:aws:servicediscovery:us-east-1:{got['ResourceOwner']}:namespace/{ns}"
    # The same CreatorRequestId is a retry; another request for the name is refused.
    again = sd.create_private_dns_namespace(Name="api.internal", Vpc=vpc_of(sd), CreatorRequestId="req-1")
    assert sd.get_operation(OperationId=again["OperationId"])["Operation"]["Targets"]["NAMESPACE"] == ns
    assert code_of(sd.create_private_dns_namespace, Name="api.internal", Vpc=vpc_of(sd))[0] == "NamespaceAlreadyExists"
    assert code_of(sd.create_private_dns_namespace, Name="bad name", Vpc=vpc_of(sd))[0] == "InvalidInput"
    assert code_of(sd.create_private_dns_namespace, Name="other.internal", Vpc="vpc-0000")[0] == "InvalidInput"
    http = sd.get_operation(OperationId=sd.create_http_namespace(Name="jobs")["OperationId"])["Operation"]
    assert code_of(sd.get_namespace, Id="ns-doesnotexist")[0] == "NamespaceNotFound"

    web = sd.create_service(Name="web", NamespaceId=ns, DnsConfig={"DnsRecords": [{"Type": "A", "TTL": 5}]},
                            HealthCheckCustomConfig={"FailureThreshold": 1})["Service"]
    assert web["Type"] == "DNS_HTTP" and web["DnsConfig"]["RoutingPolicy"] == "MULTIVALUE"
    assert web["InstanceCount"] == 0 and web["NamespaceId"] == ns
    assert code_of(sd.create_service, Name="web", NamespaceId=ns)[0] == "ServiceAlreadyExists"
    code, msg = code_of(sd.create_service, Name="cn", NamespaceId=ns, DnsConfig={"DnsRecords": [{"Type": "CNAME", "TTL": 5}]})
    assert code == "InvalidInput" and "WEIGHTED" in msg
    code, msg = code_of(sd.create_service, Name="r53", NamespaceId=ns,
                        HealthCheckConfig={"Type": "HTTP", "ResourcePath": "/"})
    assert code == "InvalidInput" and "HealthCheckConfig" in msg
    jobs = http["Targets"]["NAMESPACE"]
    assert code_of(sd.create_service, Name="q", NamespaceId=jobs,
                   DnsConfig={"DnsRecords": [{"Type": "A", "TTL": 5}]})[0] == "InvalidInput"
    assert sd.create_service(Name="q", NamespaceId=jobs)["Service"]["Type"] == "HTTP"
    # Model constraints are checked before anything else, in AWS's words.
    code, msg = code_of(sd.create_service, Name="long", NamespaceId=ns, Description="d" * 1100)
    assert code == "InvalidInput" and "validation error" in msg

    listed = sd.list_services(Filters=[{"Name": "NAMESPACE_ID", "Values": [ns], "Condition": "EQ"}])["Services"]
    assert [s["Name"] for s in listed] == ["web"]
    assert sd.get_namespace(Id=ns)["Namespace"]["ServiceCount"] == 1
    assert [n["Name"] for n in sd.list_namespaces(Filters=[{"Name": "TYPE", "Values": ["HTTP"]}])["Namespaces"]] == ["jobs"]
    op = sd.update_service(Id=web["Id"], Service={"DnsConfig": {"DnsRecords": [{"Type": "A", "TTL": 60}]}})["OperationId"]
    assert sd.get_operation(OperationId=op)["Operation"]["Type"] == "UPDATE_SERVICE"
    assert sd.get_service(Id=web["Arn"])["Service"]["DnsConfig"]["DnsRecords"] == [{"Type": "A", "TTL": 60}]
    assert code_of(sd.update_service, Id=web["Id"],
                   Service={"DnsConfig": {"DnsRecords": [{"Type": "SRV", "TTL": 60}]}})[0] == "InvalidInput"

    sd.tag_resource(ResourceARN=web["Arn"], Tags=[{"Key": "tier", "Value": "front"}])
    assert sd.list_tags_for_resource(ResourceARN=web["Arn"])["Tags"] == [{"Key": "tier", "Value": "front"}]
    sd.untag_resource(ResourceARN=web["Arn"], TagKeys=["tier"])
    assert sd.list_tags_for_resource(ResourceARN=web["Arn"])["Tags"] == []
    assert sd.list_tags_for_resource(ResourceARN=got["Arn"])["Tags"] == [{"Key": "team", "Value": "core"}]
    assert code_of(sd.list_tags_for_resource, ResourceARN=got["Arn"] + "x")[0] == "ResourceNotFoundException"

    assert code_of(sd.delete_namespace, Id=ns)[0] == "ResourceInUse"
    sd.delete_service(Id=web["Id"])
    sd.delete_service(Id=sd.list_services(Filters=[{"Name": "NAMESPACE_ID", "Values": [jobs]}])["Services"][0]["Id"])
    for n in (ns, jobs):
        assert sd.get_operation(OperationId=sd.delete_namespace(Id=n)["OperationId"])["Operation"]["Status"] == "SUCCESS"
    assert code_of(sd.get_service, Id=web["Id"])[0] == "ServiceNotFound"
    assert code_of(sd.get_operation, OperationId="nope")[0] == "OperationNotFound"


def test_instances_health_and_discovery(sd, discovery, gantry):
    ns = namespace(sd, "disc.internal")
    svc = sd.create_service(Name="api", NamespaceId=ns,
                            DnsConfig={"DnsRecords": [{"Type": "A", "TTL": 5}, {"Type": "SRV", "TTL": 5}]},
                            HealthCheckCustomConfig={})["Service"]
    for i, (ip, color) in enumerate([("10.9.0.1", "blue"), ("10.9.0.2", "green"), ("10.9.0.3", "green")]):
        sd.register_instance(ServiceId=svc["Id"], InstanceId=f"i-{i}", Attributes={
            "AWS_INSTANCE_IPV4": ip, "AWS_INSTANCE_PORT": "8080", "color": color,
            **({"AWS_INIT_HEALTH_STATUS": "UNHEALTHY"} if i == 2 else {})})
    code, msg = code_of(sd.register_instance, ServiceId=svc["Id"], InstanceId="i-x", Attributes={"AWS_INSTANCE_IPV4": "10.9.0.9"})
    assert code == "InvalidInput" and "AWS_INSTANCE_PORT" in msg
    code, msg = code_of(sd.register_instance, ServiceId=svc["Id"], InstanceId="i-x",
                        Attributes={"AWS_INSTANCE_IPV4": "not-an-ip", "AWS_INSTANCE_PORT": "80"})
    assert code == "InvalidInput" and "IPv4" in msg
    assert code_of(sd.register_instance, ServiceId="srv-nope", InstanceId="i", Attributes={})[0] == "ServiceNotFound"

    assert sd.get_instances_health_status(ServiceId=svc["Id"])["Status"] == {
        "i-0": "HEALTHY", "i-1": "HEALTHY", "i-2": "UNHEALTHY"}
    found = discovery.discover_instances(NamespaceName="disc.internal", ServiceName="api")["Instances"]
    assert sorted(f["InstanceId"] for f in found) == ["i-0", "i-1"]
    green = discovery.discover_instances(NamespaceName="disc.internal", ServiceName="api", HealthStatus="ALL",
                                         QueryParameters={"color": "green"})["Instances"]
    assert sorted(f["InstanceId"] for f in green) == ["i-1", "i-2"]
    preferred = discovery.discover_instances(NamespaceName="disc.internal", ServiceName="api",
                                             OptionalParameters={"color": "blue"})["Instances"]
    assert [f["InstanceId"] for f in preferred] == ["i-0"]
    sd.update_instance_custom_health_status(ServiceId=svc["Id"], InstanceId="i-0", Status="UNHEALTHY")
    sd.update_instance_custom_health_status(ServiceId=svc["Id"], InstanceId="i-1", Status="UNHEALTHY")
    assert discovery.discover_instances(NamespaceName="disc.internal", ServiceName="api")["Instances"] == []
    fail_open = discovery.discover_instances(NamespaceName="disc.internal", ServiceName="api",
                                             HealthStatus="HEALTHY_OR_ELSE_ALL")["Instances"]
    assert len(fail_open) == 3
    assert code_of(discovery.discover_instances, NamespaceName="nope", ServiceName="api")[0] == "NamespaceNotFound"

    # awscli, with host prefix injection off for the endpoint override.
    out, _ = gantry.aws("servicediscovery", "list-instances", "--service-id", svc["Id"])
    assert sorted(i["Id"] for i in out["Instances"]) == ["i-0", "i-1", "i-2"]
    assert out["Instances"][0]["Attributes"]["AWS_INSTANCE_PORT"] == "8080"
    got = sd.get_instance(ServiceId=svc["Id"], InstanceId="i-1")["Instance"]
    assert got["Attributes"]["AWS_INSTANCE_IPV4"] == "10.9.0.2"

    page = sd.list_instances(ServiceId=svc["Id"], MaxResults=2)
    assert len(page["Instances"]) == 2 and page["NextToken"]
    rest = sd.list_instances(ServiceId=svc["Id"], MaxResults=2, NextToken=page["NextToken"])["Instances"]
    assert len(rest) == 1

    assert code_of(sd.delete_service, Id=svc["Id"])[0] == "ResourceInUse"
    for i in range(3):
        op = sd.deregister_instance(ServiceId=svc["Id"], InstanceId=f"i-{i}")["OperationId"]
        assert sd.get_operation(OperationId=op)["Operation"]["Type"] == "DEREGISTER_INSTANCE"
    assert code_of(sd.deregister_instance, ServiceId=svc["Id"], InstanceId="i-0")[0] == "InstanceNotFound"
    ops = sd.list_operations(Filters=[{"Name": "SERVICE_ID", "Values": [svc["Id"]]},
                                      {"Name": "TYPE", "Values": ["REGISTER_INSTANCE"]}])["Operations"]
    assert len(ops) == 3 and all(o["Status"] == "SUCCESS" for o in ops)
    plain = sd.create_service(Name="plain", NamespaceId=ns, DnsConfig={"DnsRecords": [{"Type": "A", "TTL": 5}]})["Service"]
    assert code_of(sd.update_instance_custom_health_status, ServiceId=plain["Id"], InstanceId="i",
                   Status="HEALTHY")[0] == "CustomHealthNotFound"
    sd.delete_service(Id=plain["Id"])
    sd.delete_service(Id=svc["Id"])
    sd.delete_namespace(Id=ns)
