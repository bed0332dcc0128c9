"""What one client can hold of the API, against a `gantry dev` with small limits: clients
that trickle half a header are cut off at the header timeout, a source address over its
connection cap is refused while other sources are served, an access key over its request
rate is answered ThrottlingException (Throttling for a Query service) in AWS's words while
another key is not, and the service quotas hold: the account's task launch rate, services
per cluster, tasks per service."""
import concurrent.futures
import socket
import time

import boto3
import botocore.config
import botocore.exceptions
import pytest

from conftest import REGION, Gantry, every_subnet, register

PER_SOURCE = 20
HEADER_TIMEOUT = 2
RATE = 5  # requests per second per key, after a burst of 10
LAUNCH_RATE = 1  # tasks per second per account, after a burst of 5


@pytest.fixture(scope="module")
def limited():
    g = Gantry(instance=5)
    g.env.update({"GANTRY_API_HEADER_TIMEOUT": str(HEADER_TIMEOUT),
                  "GANTRY_API_CONNECTIONS_PER_SOURCE": str(PER_SOURCE),
                  "GANTRY_API_REQUEST_RATE": str(RATE), "GANTRY_TASK_LAUNCH_RATE": str(LAUNCH_RATE),
                  "GANTRY_SERVICES_PER_CLUSTER": "1", "GANTRY_TASKS_PER_SERVICE": "3"})
    try:
        g.start()
        yield g
    finally:
        g.cleanup()


def half_header(port, source="127.0.0.1"):
    s = socket.create_connection(("127.0.0.1", port), timeout=5, source_address=(source, 0))
    s.sendall(b"POST / HTTP/1.1\r\nHost: x\r\nX-Amz-Target: AmazonEC2ContainerServiceV20141113.ListClusters\r\nX-Slow: ")
    return s


def closed(s, within):
    """Whether the server closes `s` within `within` seconds."""
    s.settimeout(within)
    try:
        while s.recv(4096):
            pass
        return True
    except socket.timeout:
        return False
    except OSError:
        return True


def test_slow_clients_are_cut_off_and_a_source_over_its_cap_refused(limited):
    # Connections earlier clients kept alive count against the cap until they idle out.
    time.sleep(HEADER_TIMEOUT + 0.5)
    began = time.monotonic()
    slow = [half_header(limited.port) for _ in range(PER_SOURCE)]
    time.sleep(0.3)
    # Over the cap: closed on accept, unanswered.
    over = socket.create_connection(("127.0.0.1", limited.port), timeout=5)
    assert closed(over, 1), "a connection over the source's cap was held"
    # Another source address is served meanwhile.
    other = socket.create_connection(("127.0.0.1", limited.port), timeout=5, source_address=("127.0.0.2", 0))
    other.sendall(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
    answer = b""
    while chunk := other.recv(4096):
        answer += chunk
    assert answer.startswith(b"HTTP/1.1 ") and b"MissingAuthenticationToken" in answer, answer[:300]
    # The slow ones are cut off at the header timeout, not before.
    assert not any(closed(s, 0.05) for s in slow[:3])
    assert all(closed(s, HEADER_TIMEOUT + 3) for s in slow)
    assert time.monotonic() - began >= HEADER_TIMEOUT
    # Once they are gone the source is admitted again.
    limited.client("ecs").list_clusters()


def test_a_key_over_its_request_rate_is_throttled_in_its_services_shape(limited):
    no_retry = botocore.config.Config(retries={"max_attempts": 1})
    iam = limited.client("iam")
    iam.create_user(UserName="busy")
    iam.put_user_policy(UserName="busy", PolicyName="all", PolicyDocument=(
        '{"Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}]}'))
    key = iam.create_access_key(UserName="busy")["AccessKey"]

    def client(service):
        return boto3.client(service, endpoint_url=limited.endpoint, region_name=REGION, config=no_retry,
                            aws_access_key_id=key["AccessKeyId"], aws_secret_access_key=key["SecretAccessKey"])

    def errors_of(call):
        try:
            call()
        except botocore.exceptions.ClientError as e:
            return (e.response["Error"]["Code"], e.response["Error"]["Message"],
                    e.response["ResponseMetadata"]["HTTPStatusCode"])

    for service, call, code in [("ecs", "list_clusters", "ThrottlingException"),
                                ("sts", "get_caller_identity", "Throttling")]:
        # Ten callers at once: well over the rate however slow one call is.
        c = client(service)
        with concurrent.futures.ThreadPoolExecutor(10) as pool:
            answers = list(pool.map(lambda _: errors_of(getattr(c, call)), range(12 * RATE)))
        errors = [a for a in answers if a]
        assert errors and set(errors) == {(code, "Rate exceeded", 400)}, errors
        assert len(errors) < len(answers), "nothing was admitted"
        # Another key (the root's) is not throttled meanwhile.
        getattr(limited.client(service), call)()
        time.sleep(2.5)  # the bucket refills (a burst of 2 x RATE at RATE per second)
    # With the SDK's own retries (standard mode backs off on throttling) every call succeeds.
    patient = boto3.client("ecs", endpoint_url=limited.endpoint, region_name=REGION,
                           config=botocore.config.Config(retries={"max_attempts": 10, "mode": "standard"}),
                           aws_access_key_id=key["AccessKeyId"], aws_secret_access_key=key["SecretAccessKey"])
    for _ in range(3 * RATE):
        patient.list_clusters()


def test_service_quotas_launch_rate_services_per_cluster_tasks_per_service(limited):
    patient = botocore.config.Config(retries={"max_attempts": 10, "mode": "standard"})
    ecs = limited.client("ecs", config=patient)
    network = every_subnet(limited.client("ec2", config=patient))
    td = register(ecs, "quota", [{"name": "app", "command": ["sleep", "600"]}])["taskDefinitionArn"]
    time.sleep(2.5)  # the root key's request bucket refills: the throttling below is the launch rate's
    once = limited.client("ecs")  # no retries
    started = once.run_task(taskDefinition=td, count=5, networkConfiguration=network, launchType="FARGATE")
    assert len(started["tasks"]) == 5, started["failures"]
    # The burst is spent: five more would need five seconds of refill (however long the
    # first call took to place its tasks, it took less).
    with pytest.raises(botocore.exceptions.ClientError) as e:
        once.run_task(taskDefinition=td, count=5, networkConfiguration=network, launchType="FARGATE")
    assert (e.value.response["Error"]["Code"], e.value.response["Error"]["Message"]) == \
        ("ThrottlingException", "Rate exceeded")
    time.sleep(1.5 / LAUNCH_RATE)
    more = once.run_task(taskDefinition=td, networkConfiguration=network, launchType="FARGATE")["tasks"]
    arns = [t["taskArn"] for t in started["tasks"] + more]

    ecs.create_service(serviceName="only", taskDefinition=td, desiredCount=0, networkConfiguration=network)
    with pytest.raises(botocore.exceptions.ClientError) as e:
        ecs.update_service(service="only", desiredCount=4)
    assert e.value.response["Error"]["Code"] == "InvalidParameterException"
    assert "quota of tasks per service" in e.value.response["Error"]["Message"]
    with pytest.raises(botocore.exceptions.ClientError) as e:
        ecs.create_service(serviceName="second", taskDefinition=td, desiredCount=0, networkConfiguration=network)
    assert e.value.response["Error"]["Code"] == "ClientException"
    assert "quota of services per cluster (1)" in e.value.response["Error"]["Message"]
    ecs.delete_service(service="only", force=True)
    for arn in arns:
        ecs.stop_task(task=arn)
