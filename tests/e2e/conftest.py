"""End-to-end harness: a real `gantry dev` (built by cargo) on a loopback port with its own
data dir, bridge and subnet, driven by the real AWS CLI and boto3 from PyPI. Root required."""
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import struct
import tempfile
import threading
import time

import boto3
import botocore.config
import pytest

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
# GANTRY_BINARY runs the tests against another build (scripts/build-pgo.sh trains on them).
GANTRY = os.environ.get("GANTRY_BINARY") or os.path.join(ROOT, "target", "debug", "gantry")
AWS = os.path.join(os.path.dirname(sys.executable), "aws")
KEY, SECRET, ACCOUNT = "AKIDGANTRYE2ETEST01", "e2e-secret-key-for-gantry-tests", "123456789012"
REGION = "us-east-1"
IMAGE = "gantry-test/busybox:latest"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def fixed_host_port():
    """A free port below the kernel's ephemeral range (32768-60999 here), so no client
    connection on this machine takes it between this check and the task's bind."""
    for _ in range(100):
        port = random.randrange(20000, 32000)
        with socket.socket() as s:
            try:
                s.bind(("0.0.0.0", port))
                return port
            except OSError:
                continue
    raise AssertionError("no free port in 20000-32000")


def files_holding(root, needle):
    """Regular files under `root` whose bytes hold `needle`. The tasks' ephemeral storage
    images (sparse, 20 GiB each) are skipped: what the tasks' filesystems hold is read through
    their mounts under data/ephemeral, which the walk visits."""
    found = []
    for dirpath, dirs, files in os.walk(root):
        dirs[:] = [d for d in dirs if d != "ephemeral-images"]
        for f in files:
            path = os.path.join(dirpath, f)
            try:
                if os.path.isfile(path) and not os.path.islink(path):
                    with open(path, "rb") as fh:
                        if needle in fh.read():
                            found.append(path)
            except OSError:
                pass
    return found


def mounts_under(path):
    """Mount points under `path` (this process's mount namespace)."""
    prefix = os.path.realpath(path) + "/"
    with open("/proc/self/mountinfo") as f:
        points = {line.split()[4].encode().decode("unicode_escape") for line in f}
    return sorted(p for p in points if p.startswith(prefix))


def unmount_under(path):
    """Lazily unmounts every mount under `path`, deepest first (a test's namespaces, template
    mount namespace, ephemeral storage), so that removing the directory never walks into one."""
    for point in sorted(mounts_under(path), key=len, reverse=True):
        subprocess.run(["umount", "-l", point], stderr=subprocess.DEVNULL)


def remove_hosts_lines(tag):
    """Drops the /etc/hosts lines a Gantry instance tagged (a killed one cannot)."""
    mark = f"# gantry-lb {tag}"
    with open("/etc/hosts") as f:
        lines = f.readlines()
    kept = [line for line in lines if not line.rstrip("\n").endswith(mark)]
    if kept != lines:
        with open("/etc/hosts", "w") as f:
            f.writelines(kept)


STUB_ADDRESS = "192.0.2.7"  # TEST-NET-1: answered, never contacted


def start_stub_resolver():
    """A stand-in for the node's upstream resolvers on loopback: every A query is answered with
    STUB_ADDRESS, other types with no records. Gantry's task resolver relays names outside
    Cloud Map here, so tests never send DNS to the machine's real resolvers."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))

    def serve():
        while True:
            q, peer = sock.recvfrom(4096)
            end = 12
            while end < len(q) and q[end] != 0:
                end += q[end] + 1
            question = q[12:end + 5]
            qtype = struct.unpack("!H", q[end + 1:end + 3])[0] if end + 3 <= len(q) else 0
            answers = b""
            if qtype == 1:
                answers = b"\xc0\x0c" + struct.pack("!HHIH", 1, 1, 60, 4) + socket.inet_aton(STUB_ADDRESS)
            header = q[:2] + struct.pack("!HHHHH", 0x8180, 1, 1 if answers else 0, 0, 0)
            sock.sendto(header + question + answers, peer)

    threading.Thread(target=serve, daemon=True).start()
    return sock.getsockname()[1]


STUB_RESOLVER_PORT = start_stub_resolver()


class Gantry:
    def __init__(self, instance=0):
        assert os.geteuid() == 0, "e2e tests need root (CI runs as root)"
        assert os.path.exists(GANTRY), f"{GANTRY} not built: run cargo build --workspace"
        self.dir = tempfile.mkdtemp(prefix="gantry-e2e-", dir="/var/tmp")
        self.port = free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self.bridge = f"ge{os.getpid() % 100000}x{instance}"
        self.node_args = ["--data-dir", f"{self.dir}/data", "--run-dir", f"{self.dir}/run",
                          "--bridge", self.bridge, "--subnet", f"10.217.{instance}.0/24"]
        # Load balancers listen on this instance's own loopback block; their names go into
        # /etc/hosts tagged with it.
        self.lb_network = f"127.{100 + os.getpid() % 100}.{instance}.0/24"
        self.env = dict(os.environ, GANTRY_ACCESS_KEY_ID=KEY, GANTRY_SECRET_ACCESS_KEY=SECRET,
                        GANTRY_ACCOUNT_ID=ACCOUNT, GANTRY_WARM_POOL="2", GANTRY_LB_NETWORK=self.lb_network,
                        GANTRY_DNS_UPSTREAM=f"127.0.0.1:{STUB_RESOLVER_PORT}",
                        GANTRY_METRICS_INTERVAL="2")
        self.proc = None
        img = os.path.join(self.dir, "img")
        try:
            subprocess.run([sys.executable, os.path.join(ROOT, "tests/fixtures/mkimage.py"), img], check=True,
                           stdout=subprocess.DEVNULL)
            self.cli("image", "load", os.path.join(img, "oci"))
        except BaseException:
            # Not started, so no cleanup() will come: the directory goes now.
            shutil.rmtree(self.dir, ignore_errors=True)
            raise

    def cli(self, *args, check=True):
        return subprocess.run([GANTRY, *self.node_args, *args], check=check, capture_output=True, text=True, env=self.env)

    def start(self):
        log = open(os.path.join(self.dir, "dev.log"), "a")
        self.proc = subprocess.Popen([GANTRY, *self.node_args, "dev", "--listen", f"127.0.0.1:{self.port}", "--no-profile"],
                                     env=self.env, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.time() + 30
        while time.time() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
            except OSError:
                assert self.proc.poll() is None, f"gantry dev exited: {self.log()}"
                time.sleep(0.05)
                continue
            if not NETWORK["awsvpcConfiguration"]["subnets"]:
                NETWORK["awsvpcConfiguration"]["subnets"] = every_subnet(self.client("ec2"))["awsvpcConfiguration"]["subnets"]
            return
        raise AssertionError(f"gantry dev did not listen: {self.log()}")

    def kill9(self):
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def log(self):
        try:
            return open(os.path.join(self.dir, "dev.log")).read()[-4000:]
        except OSError:
            return ""

    def cleanup(self):
        self.stop()
        self.cli("debug", "sweep", "--all", check=False)
        subprocess.run(["ip", "link", "del", self.bridge], stderr=subprocess.DEVNULL)
        unmount_under(self.dir)  # what sweep --all could not remove (it ran into an error)
        remove_hosts_lines(self.lb_network)
        shutil.rmtree(self.dir, ignore_errors=True)

    def client(self, service, **kw):
        return boto3.client(service, endpoint_url=self.endpoint, region_name=REGION,
                            aws_access_key_id=kw.pop("key", KEY), aws_secret_access_key=kw.pop("secret", SECRET),
                            config=kw.pop("config", botocore.config.Config(retries={"max_attempts": 1})), **kw)

    def aws(self, *args, check=True):
        env = dict(os.environ, AWS_ACCESS_KEY_ID=KEY, AWS_SECRET_ACCESS_KEY=SECRET, AWS_DEFAULT_REGION=REGION,
                   AWS_CONFIG_FILE="/dev/null", AWS_SHARED_CREDENTIALS_FILE="/dev/null")
        p = subprocess.run([AWS, "--endpoint-url", self.endpoint, "--output", "json", *args], capture_output=True,
                           text=True, env=env, timeout=300)
        if check and p.returncode != 0:
            raise AssertionError(f"aws {' '.join(args)} failed ({p.returncode}): {p.stderr}")
        return json.loads(p.stdout) if p.stdout.strip() else None, p


@pytest.fixture(scope="session")
def gantry():
    g = Gantry()
    try:
        g.start()
        yield g
    finally:
        # Also when it failed to start: what it set up before failing goes too.
        g.cleanup()


@pytest.fixture
def ecs(gantry):
    return gantry.client("ecs")


@pytest.fixture
def logs(gantry):
    return gantry.client("logs")


# The `gantry dev` node's subnet, filled in when the first instance starts (every instance's
# node is "local" in the same account, so they share the id).
# Benchmarks measure Gantry's own path, not its limits: no request rate or launch rate.
UNLIMITED = {"GANTRY_API_REQUEST_RATE": "0", "GANTRY_TASK_LAUNCH_RATE": "0"}

NETWORK = {"awsvpcConfiguration": {"subnets": [], "assignPublicIp": "DISABLED"}}


def log_lines(logs, group, stream, until="done"):
    """A stream's lines once `until` is among them, else None (a condition for wait_for)."""
    try:
        events = logs.get_log_events(logGroupName=group, logStreamName=stream)["events"]
    except logs.exceptions.ResourceNotFoundException:
        return None
    lines = [e["message"] for e in events]
    return lines if until in lines else None


def vpc_of(client):
    """The default VPC's id, asked of the Gantry `client` talks to."""
    ec2 = boto3.client("ec2", endpoint_url=client.meta.endpoint_url, region_name=REGION,
                       aws_access_key_id=KEY, aws_secret_access_key=SECRET)
    return ec2.describe_vpcs()["Vpcs"][0]["VpcId"]


def subnets():
    """The default VPC's subnets of the session's `gantry dev` (known once it started)."""
    return NETWORK["awsvpcConfiguration"]["subnets"]


def every_subnet(ec2):
    """An awsvpcConfiguration with every subnet of the default VPC (one per node network)."""
    ids = wait_for("the nodes' subnets", lambda: [s["SubnetId"] for s in ec2.describe_subnets()["Subnets"]], 30)
    return {"awsvpcConfiguration": {"subnets": ids}}


def wait_for(what, check, timeout=60, poll=0.2):
    """Polls `check` until it returns something truthy (returned), failing after `timeout`."""
    deadline = time.time() + timeout
    while not (got := check()):
        assert time.time() < deadline, f"timed out waiting for {what}"
        time.sleep(poll)
    return got


def register(ecs, family, containers, cpu="256", memory="512", **kw):
    for c in containers:
        c.setdefault("image", IMAGE)
    return ecs.register_task_definition(family=family, networkMode="awsvpc", requiresCompatibilities=["FARGATE"],
                                        cpu=cpu, memory=memory, containerDefinitions=containers, **kw)["taskDefinition"]


ECS_TASKS_TRUST = {"Version": "2012-10-17", "Statement": [
    {"Effect": "Allow", "Principal": {"Service": "ecs-tasks.amazonaws.com"}, "Action": "sts:AssumeRole"}]}
# What AWS's AmazonECSTaskExecutionRolePolicy allows, plus reading secrets and parameters.
EXECUTION_POLICY = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Resource": "*", "Action": [
    "logs:CreateLogStream", "logs:CreateLogGroup", "logs:PutLogEvents", "secretsmanager:GetSecretValue",
    "ssm:GetParameters"]}]}


def execution_role(iam, name="ecsTaskExecutionRole", policy=EXECUTION_POLICY):
    """An execution role ECS tasks may assume, with `policy` (made once per name)."""
    try:
        arn = iam.create_role(RoleName=name, AssumeRolePolicyDocument=json.dumps(ECS_TASKS_TRUST))["Role"]["Arn"]
    except iam.exceptions.EntityAlreadyExistsException:
        arn = iam.get_role(RoleName=name)["Role"]["Arn"]
    if policy is not None:
        iam.put_role_policy(RoleName=name, PolicyName="execution", PolicyDocument=json.dumps(policy))
    return arn


def run(ecs, cluster, td, network=None, **kw):
    """RunTask on Fargate in `network` (default: the `gantry dev` node's subnet)."""
    r = ecs.run_task(cluster=cluster, taskDefinition=td, networkConfiguration=network or NETWORK, launchType="FARGATE", **kw)
    assert r["failures"] == [], r["failures"]
    return r["tasks"]


def wait_stopped(ecs, cluster, arns):
    ecs.get_waiter("tasks_stopped").wait(cluster=cluster, tasks=arns, WaiterConfig={"Delay": 1, "MaxAttempts": 120})
    return ecs.describe_tasks(cluster=cluster, tasks=arns)["tasks"]


def awslogs(group, prefix="ecs"):
    return {"logDriver": "awslogs", "options": {"awslogs-group": group, "awslogs-stream-prefix": prefix,
                                                "awslogs-create-group": "true", "awslogs-region": REGION}}
