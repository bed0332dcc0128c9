"""Model-driven conformance: every operation Gantry implements, driven by requests built from
botocore's published input shapes (required members only, each enum value, boundary lengths
and numbers), must answer with a response that validates against the output shape (required
members present, types, enums, no undeclared members) or with one of the operation's
declared errors in AWS's error shape. Prints the count of checked variants and the list of
operations not implemented."""
import copy
import datetime
import json

import botocore.config
import botocore.handlers
import botocore.session
import pytest

from conftest import IMAGE, KEY, NETWORK, REGION, SECRET

SERVICES = ["ecs", "logs", "servicediscovery", "acm", "cloudwatch", "application-autoscaling", "secretsmanager",
            "ssm"]
# Errors any AWS JSON service may answer besides the declared ones (auth, size, throttling).
GENERIC = {"AccessDeniedException", "UnrecognizedClientException", "ThrottlingException",
           "RequestEntityTooLargeException", "SerializationException"}
# CloudWatch came from Query, whose common errors every action may answer (its JSON model
# declares none for GetMetricData but InvalidNextToken).
# Application Auto Scaling answers input constraint violations with its ValidationException
# on every operation (ListTagsForResource declares only ResourceNotFoundException).
COMMON = {"cloudwatch": {"InvalidParameterValueException", "MissingRequiredParameterException",
                         "InvalidParameterCombinationException", "InternalServiceFault"},
          "application-autoscaling": {"ValidationException"},
          # SSM, like Application Auto Scaling, answers constraint violations with ValidationException.
          "ssm": {"ValidationException"}}
NOT_IMPLEMENTED = {"InvalidAction", "UnknownOperationException"}
# Destructive operations run last so the fixtures stay usable for the rest.
LAST = ("Delete", "Deregister", "Stop", "Untag", "Disassociate")


def good_values(ecs, logs):
    """Existing resources and plausible values, by member name."""
    ecs.create_cluster(clusterName="conf")
    td = ecs.register_task_definition(family="conf", networkMode="awsvpc", requiresCompatibilities=["FARGATE"],
                                      cpu="256", memory="512",
                                      containerDefinitions=[{"name": "app", "image": IMAGE, "command": ["true"]}])
    net = NETWORK
    task = ecs.run_task(cluster="conf", taskDefinition="conf", networkConfiguration=net, launchType="FARGATE")["tasks"][0]
    ecs.create_service(cluster="conf", serviceName="conf-svc", taskDefinition="conf", desiredCount=0,
                       networkConfiguration=net, launchType="FARGATE")
    logs.create_log_group(logGroupName="/conf")
    logs.create_log_stream(logGroupName="/conf", logStreamName="s")
    cluster_arn = f"arn:aws:ecs:{REGION}:123456789012:cluster/conf"
    return {
        "cluster": "conf", "clusterName": "conf", "clusters": ["conf"],
        "taskDefinition": "conf:1", "family": "conf", "familyPrefix": "conf", "taskDefinitions": ["conf:1"],
        "service": "conf-svc", "serviceName": "conf-svc", "services": ["conf-svc"],
        "task": task["taskArn"], "tasks": [task["taskArn"]],
        "resourceArn": cluster_arn, "tagKeys": ["k"], "tags": [{"key": "k", "value": "v"}],
        "containerDefinitions": td["taskDefinition"]["containerDefinitions"][:1],
        "networkConfiguration": net, "launchType": "FARGATE", "networkMode": "awsvpc",
        "cpu": "256", "memory": "512", "requiresCompatibilities": ["FARGATE"],
        "name": "containerInsights", "value": "enabled",
        "logGroupName": "/conf", "logStreamName": "s", "logGroupNamePrefix": "/conf",
        "logEvents": [{"timestamp": int(datetime.datetime.now().timestamp() * 1000), "message": "m"}],
        "retentionInDays": 1, "capacityProviders": ["FARGATE"],
    }


def sample(shape, name, good, depth=0):
    if name in good and not problems(shape, to_wire(good[name])):
        return good[name]
    t = shape.type_name
    if t == "string":
        if shape.enum:
            return shape.enum[0]
        return "x" * max(shape.metadata.get("min", 1), 1)
    if t in ("integer", "long"):
        return max(shape.metadata.get("min", 1), 1)
    if t == "double" or t == "float":
        return 1.0
    if t == "boolean":
        return False
    if t == "timestamp":
        return datetime.datetime.now(datetime.timezone.utc)
    if t == "blob":
        return b"x"
    if t == "list":
        return [sample(shape.member, name, good, depth + 1)] if depth < 4 else []
    if t == "map":
        return {}
    if t == "structure":
        return {m: sample(s, m, good, depth + 1) for m, s in shape.members.items() if m in shape.required_members}
    raise AssertionError(f"unknown shape type {t}")


def enum_paths(shape, prefix=(), depth=0):
    """Paths to enum-typed members nested in structures and lists, with their shapes."""
    if depth > 3:
        return
    if shape.type_name == "structure":
        for m, sub in shape.members.items():
            if sub.type_name == "string" and sub.enum:
                yield prefix + (m,), sub
            elif sub.type_name in ("structure", "list"):
                yield from enum_paths(sub, prefix + (m,), depth + 1)
    elif shape.type_name == "list":
        yield from enum_paths(shape.member, prefix + (0,), depth + 1)


def set_path(obj, shape, path, value, good):
    """Sets a nested member, building the parents it needs from the model."""
    key, rest = path[0], path[1:]
    if shape.type_name == "list":
        if not obj:
            obj.append(sample(shape.member, "", good))
        if rest:
            set_path(obj[0], shape.member, rest, value, good)
        else:
            obj[0] = value
        return
    sub = shape.members[key]
    if not rest:
        obj[key] = value
        return
    if not isinstance(obj.get(key), (dict, list)):
        obj[key] = sample(sub, key, good)
    set_path(obj[key], sub, rest, value, good)


def variants(op, good):
    """(label, params) pairs built from the input shape."""
    shape = op.input_shape
    if shape is None:
        yield "empty", {}
        return
    base = {m: sample(s, m, good) for m, s in shape.members.items() if m in shape.required_members}
    yield "required", base
    for path, sub in enum_paths(shape):
        if len(path) < 2:
            continue
        for v in sub.enum:
            params = copy.deepcopy(base)
            set_path(params, shape, path, v, good)
            yield ".".join(map(str, path)) + f"={v}", params
    for m, s in shape.members.items():
        if m not in shape.required_members:
            yield f"+{m}", dict(base, **{m: sample(s, m, good)})
        if s.type_name == "string" and s.enum:
            for v in s.enum:
                yield f"{m}={v}", dict(base, **{m: v})
        elif s.type_name == "string" and m not in good:
            lo, hi = s.metadata.get("min"), s.metadata.get("max")
            if hi and hi <= 4096:
                yield f"{m}@max", dict(base, **{m: "a" * hi})
                yield f"{m}@max+1", dict(base, **{m: "a" * (hi + 1)})
            if lo and lo > 1:
                yield f"{m}@min-1", dict(base, **{m: "a" * (lo - 1)})
        elif s.type_name in ("integer", "long") and m not in good:
            lo, hi = s.metadata.get("min"), s.metadata.get("max")
            for label, v in (("min", lo), ("max", hi), ("min-1", lo - 1 if lo is not None else None),
                             ("max+1", hi + 1 if hi is not None else None)):
                if v is not None:
                    yield f"{m}@{label}", dict(base, **{m: v})


def to_wire(v):
    """A request value as JSON would carry it (to check a fixture value against a shape)."""
    if isinstance(v, datetime.datetime):
        return v.timestamp()
    if isinstance(v, list):
        return [to_wire(x) for x in v]
    if isinstance(v, dict):
        return {k: to_wire(x) for k, x in v.items()}
    return v


def problems(shape, value, path="$"):
    """What is wrong with `value` as an instance of `shape`."""
    t = shape.type_name
    if value is None:
        return [f"{path}: null"]
    if t == "structure":
        if not isinstance(value, dict):
            return [f"{path}: expected an object, got {type(value).__name__}"]
        out = [f"{path}: undeclared member {k}" for k in value if k not in shape.members]
        out += [f"{path}: missing required member {k}" for k in shape.required_members if k not in value]
        for k, v in value.items():
            if k in shape.members:
                out += problems(shape.members[k], v, f"{path}.{k}")
        return out
    if t == "list":
        if not isinstance(value, list):
            return [f"{path}: expected a list"]
        return [p for i, v in enumerate(value) for p in problems(shape.member, v, f"{path}[{i}]")]
    if t == "map":
        if not isinstance(value, dict):
            return [f"{path}: expected a map"]
        return [p for k, v in value.items() for p in problems(shape.value, v, f"{path}[{k}]")]
    if t == "string":
        if not isinstance(value, str):
            return [f"{path}: expected a string, got {value!r}"]
        if shape.enum and value not in shape.enum:
            return [f"{path}: {value!r} is not one of {shape.enum}"]
        return []
    if t in ("integer", "long"):
        return [] if isinstance(value, int) and not isinstance(value, bool) else [f"{path}: expected an integer, got {value!r}"]
    if t in ("double", "float"):
        return [] if isinstance(value, (int, float)) and not isinstance(value, bool) else [f"{path}: expected a number"]
    if t == "boolean":
        return [] if isinstance(value, bool) else [f"{path}: expected a boolean, got {value!r}"]
    if t == "timestamp":
        return [] if isinstance(value, (int, float)) and not isinstance(value, bool) else [f"{path}: expected epoch seconds, got {value!r}"]
    return []


def test_every_implemented_operation_conforms_to_the_model(gantry, ecs, logs):
    session = botocore.session.get_session()
    good = good_values(ecs, logs)
    checked, failures, missing, implemented = 0, [], [], []
    for service in SERVICES:
        client = session.create_client(service, endpoint_url=gantry.endpoint, region_name=REGION,
                                       aws_access_key_id=KEY, aws_secret_access_key=SECRET,
                                       config=botocore.config.Config(retries={"max_attempts": 1}, parameter_validation=False))
        raw = {}
        client.meta.events.register("after-call", lambda http_response, **kw: raw.update(body=http_response.content,
                                                                                            status=http_response.status_code))
        model = session.get_service_model(service)
        names = sorted(model.operation_names, key=lambda n: (n.startswith(LAST), n))
        for name in names:
            op = model.operation_model(name)
            if (op.endpoint or {}).get("hostPrefix"):
                missing.append(f"{service}.{name}")  # a separate streaming endpoint (live tail)
                continue
            declared = {s.name for s in op.error_shapes} | GENERIC | COMMON.get(service, set())
            method = getattr(client, botocore.xform_name(name))
            for label, params in variants(op, good):
                raw.clear()
                try:
                    method(**params)
                except client.exceptions.ClientError:
                    pass
                except Exception as e:  # noqa: BLE001 - serialisation of a deliberately odd value
                    failures.append(f"{service}.{name} [{label}]: client could not send: {e}")
                    continue
                body = json.loads(raw.get("body") or b"{}")
                status = raw.get("status")
                if status and status >= 400:
                    kind = body.get("__type", "").split("#")[-1]
                    if kind in NOT_IMPLEMENTED:
                        missing.append(f"{service}.{name}")
                        break
                    checked += 1
                    if set(body) - {"__type", "message"} or not isinstance(body.get("message"), str):
                        failures.append(f"{service}.{name} [{label}]: error body not in AWS's shape: {body}")
                    if kind not in declared:
                        failures.append(f"{service}.{name} [{label}]: {kind} is not a declared error ({sorted(declared - GENERIC)}): {body.get('message')}")
                    continue
                checked += 1
                if op.output_shape is not None:
                    for p in problems(op.output_shape, body):
                        failures.append(f"{service}.{name} [{label}]: {p}")
            else:
                implemented.append(f"{service}.{name}")
    print(f"\nconformance: {checked} variants checked over {len(implemented)} operations; "
          f"{len(failures)} problems; not implemented: {', '.join(missing)}")
    print("\n".join(failures))
    assert checked > 500, checked
    assert not failures, "\n".join(failures[:80])


QUERY_SERVICES = ["elbv2", "iam", "sts"]
# The errors every Query API may answer (AWS's "common errors"), besides each operation's own.
QUERY_COMMON = {"AccessDenied", "IncompleteSignature", "InternalFailure", "InvalidAction", "InvalidClientTokenId",
                "InvalidParameterCombination", "InvalidParameterValue", "InvalidQueryParameter",
                "MalformedQueryString", "MissingAction", "MissingAuthenticationToken", "MissingParameter",
                "NotAuthorized", "RequestExpired", "ServiceUnavailable", "ThrottlingException", "ValidationError"}


# Where AWS itself answers outside its model: GetUser for the root has no UserName.
AS_AWS_ANSWERS = {("iam", "GetUser", "$.User: missing required member UserName")}


def query_good_values(gantry):
    """Existing ELBv2 and IAM resources and plausible values, by member name."""
    elb, iam = gantry.client("elbv2"), gantry.client("iam")
    lb = elb.create_load_balancer(Name="conf-lb", Subnets=NETWORK["awsvpcConfiguration"]["subnets"])["LoadBalancers"][0]
    tg = elb.create_target_group(Name="conf-tg", Protocol="HTTP", Port=80, TargetType="ip")["TargetGroups"][0]
    listener = elb.create_listener(LoadBalancerArn=lb["LoadBalancerArn"], Protocol="HTTP", Port=8080, DefaultActions=[
        {"Type": "forward", "TargetGroupArn": tg["TargetGroupArn"]}])["Listeners"][0]
    iam.create_user(UserName="conf-user")
    trust = json.dumps({"Statement": [{"Effect": "Allow", "Principal": {"AWS": "123456789012"},
                                       "Action": "sts:AssumeRole"}]})
    role = iam.create_role(RoleName="conf-role", AssumeRolePolicyDocument=trust)["Role"]
    policy = json.dumps({"Statement": [{"Effect": "Allow", "Action": "ecs:List*", "Resource": "*"}]})
    return {
        "LoadBalancerArn": lb["LoadBalancerArn"], "LoadBalancerArns": [lb["LoadBalancerArn"]],
        "TargetGroupArn": tg["TargetGroupArn"], "ListenerArn": listener["ListenerArn"],
        "ResourceArns": [lb["LoadBalancerArn"]], "Subnets": NETWORK["awsvpcConfiguration"]["subnets"],
        "UserName": "conf-user", "RoleName": "conf-role", "RoleArn": role["Arn"], "RoleSessionName": "conf",
        "PolicyDocument": policy, "AssumeRolePolicyDocument": trust, "PolicyName": "conf-policy",
    }


def test_query_services_conform_to_the_model(gantry):
    """ELBv2, IAM and STS (the Query/XML protocol): every implemented operation's answer parses
    with botocore and validates against the output shape (required members, types, enums), or
    is an error botocore can read whose code is declared for the operation or common to Query
    APIs. (Undeclared members cannot be seen here: botocore's XML parser reads only declared
    ones.)"""
    session = botocore.session.get_session()
    good = query_good_values(gantry)
    checked, failures, missing, implemented = 0, [], [], []
    for service in QUERY_SERVICES:
        client = session.create_client(service, endpoint_url=gantry.endpoint, region_name=REGION,
                                       aws_access_key_id=KEY, aws_secret_access_key=SECRET,
                                       config=botocore.config.Config(retries={"max_attempts": 1}, parameter_validation=False))
        # botocore decodes IAM's policy documents into objects: check them as sent.
        client.meta.events.unregister("after-call.iam", botocore.handlers.json_decode_policies)
        model = session.get_service_model(service)
        for name in sorted(model.operation_names, key=lambda n: (n.startswith(LAST), n)):
            op = model.operation_model(name)
            declared = {s.metadata.get("error", {}).get("code", s.name) for s in op.error_shapes} | QUERY_COMMON
            method = getattr(client, botocore.xform_name(name))
            for label, params in variants(op, good):
                try:
                    out = method(**params)
                except client.exceptions.ClientError as e:
                    err = e.response.get("Error", {})
                    code = err.get("Code", "")
                    if code in NOT_IMPLEMENTED:
                        missing.append(f"{service}.{name}")
                        break
                    checked += 1
                    if not code or not isinstance(err.get("Message"), str):
                        failures.append(f"{service}.{name} [{label}]: error not in AWS's shape: {e.response}")
                    elif code not in declared:
                        failures.append(f"{service}.{name} [{label}]: {code} is not a declared error: {err.get('Message')}")
                    continue
                except Exception as e:  # noqa: BLE001 - serialisation of a deliberately odd value
                    failures.append(f"{service}.{name} [{label}]: {type(e).__name__}: {e}")
                    continue
                checked += 1
                out.pop("ResponseMetadata", None)
                if op.output_shape is not None:
                    for p in problems(op.output_shape, to_wire(out)):
                        if (service, name, p) not in AS_AWS_ANSWERS:
                            failures.append(f"{service}.{name} [{label}]: {p}")
            else:
                implemented.append(f"{service}.{name}")
    # What the requests made for themselves goes (other tests share this instance).
    iam = gantry.client("iam")
    for p in iam.list_policies(Scope="Local")["Policies"]:
        try:
            iam.delete_policy(PolicyArn=p["Arn"])
        except iam.exceptions.ClientError:  # still attached somewhere: it stays
            pass
    print(f"\nquery conformance: {checked} variants checked over {len(implemented)} operations; "
          f"{len(failures)} problems; not implemented: {len(missing)} operations")
    print("\n".join(failures))
    assert checked > 200, checked
    assert not failures, "\n".join(failures[:80])
