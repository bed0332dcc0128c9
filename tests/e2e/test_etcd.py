"""`gantry dev --store etcd://...`: the whole control plane on a real etcd (Debian's
etcd-server, one member on loopback ports), surviving a kill -9 of gantry like the SQLite
store does."""
import re
import shutil
import socket
import subprocess
import tempfile
import time
import urllib.request

import pytest

from conftest import GANTRY, NETWORK, Gantry, register, run, wait_stopped


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Etcd:
    """One etcd member on free loopback ports in a temporary directory; it can be killed and
    started again on the same data."""

    def __init__(self):
        assert shutil.which("etcd"), "etcd is not installed: run scripts/install-deps.sh (Debian's etcd-server)"
        self.dir = tempfile.mkdtemp(prefix="gantry-etcd-", dir="/var/tmp")
        self.client, self.peer = free_port(), free_port()
        self.address = f"127.0.0.1:{self.client}"
        self.proc = None

    def start(self):
        self.proc = subprocess.Popen(["etcd", "--name", "e2e", "--data-dir", f"{self.dir}/data",
                                      "--listen-client-urls", f"http://127.0.0.1:{self.client}",
                                      "--advertise-client-urls", f"http://127.0.0.1:{self.client}",
                                      "--listen-peer-urls", f"http://127.0.0.1:{self.peer}",
                                      "--initial-advertise-peer-urls", f"http://127.0.0.1:{self.peer}",
                                      "--initial-cluster", f"e2e=http://127.0.0.1:{self.peer}"],
                                     stdout=subprocess.DEVNULL, stderr=open(f"{self.dir}/etcd.log", "a"))
        deadline = time.time() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.client), timeout=0.2).close()
                return
            except OSError:
                assert self.proc.poll() is None and time.time() < deadline, open(f"{self.dir}/etcd.log").read()[-2000:]
                time.sleep(0.1)

    def kill(self):
        self.proc.kill()
        self.proc.wait()

    def remove(self):
        if self.proc and self.proc.poll() is None:
            self.kill()
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture
def etcd_member():
    e = Etcd()
    try:
        e.start()
        yield e
    finally:
        e.remove()


@pytest.fixture
def etcd(etcd_member):
    yield etcd_member.address


def test_gantry_dev_on_etcd_runs_services_and_survives_kill9(etcd):
    g = Gantry(instance=2)
    g.env["GANTRY_STORE"] = f"etcd://{etcd}/gantry-e2e"
    try:
        g.start()
        ecs = g.client("ecs")
        loop = "trap 'exit 0' TERM; while :; do sleep 0.1; done"
        register(ecs, "on-etcd", [{"name": "app", "command": ["sh", "-c", loop], "stopTimeout": 2}])
        ecs.create_service(serviceName="etcd-svc", taskDefinition="on-etcd", desiredCount=2, launchType="FARGATE",
                           networkConfiguration=NETWORK)
        ecs.get_waiter("services_stable").wait(cluster="default", services=["etcd-svc"], WaiterConfig={"Delay": 1, "MaxAttempts": 60})
        before = sorted(ecs.list_tasks(cluster="default", serviceName="etcd-svc")["taskArns"])
        assert len(before) == 2
        g.kill9()
        g.start()
        ecs = g.client("ecs")
        s = ecs.describe_services(cluster="default", services=["etcd-svc"])["services"][0]
        assert s["runningCount"] == 2
        assert sorted(ecs.list_tasks(cluster="default", serviceName="etcd-svc")["taskArns"]) == before, "the same tasks, not replacements"
        one = run(ecs, "default", "on-etcd")[0]
        ecs.stop_task(cluster="default", task=one["taskArn"])
        assert wait_stopped(ecs, "default", [one["taskArn"]])[0]["containers"][0]["exitCode"] == 0
        ecs.update_service(service="etcd-svc", desiredCount=0)
        ecs.delete_service(service="etcd-svc")
        ecs.get_waiter("services_inactive").wait(cluster="default", services=["etcd-svc"], WaiterConfig={"Delay": 1, "MaxAttempts": 60})
    finally:
        g.cleanup()


def store_reads(etcd):
    """Reads (Range calls) etcd has answered so far, from its own /metrics."""
    text = urllib.request.urlopen(f"http://{etcd}/metrics", timeout=10).read().decode()
    return sum(float(m.group(1)) for m in re.finditer(
        r'^grpc_server_handled_total\{[^}]*grpc_method="Range"[^}]*\} (\S+)$', text, re.M))


def bytes_sent(etcd):
    """Bytes etcd has sent its clients so far, from its own /metrics."""
    text = urllib.request.urlopen(f"http://{etcd}/metrics", timeout=10).read().decode()
    return float(re.search(r'^etcd_network_client_grpc_sent_bytes_total (\S+)$', text, re.M).group(1))


def reads_per_second(etcd, seconds=11):
    """Reads and bytes sent per second over `seconds`."""
    before = store_reads(etcd), bytes_sent(etcd)
    time.sleep(seconds)
    return (store_reads(etcd) - before[0]) / seconds, (bytes_sent(etcd) - before[1]) / seconds


def test_idle_tasks_cost_no_store_reads(etcd):
    """The issue's "an idle task costs no periodic store reads": the store's read rate with
    30 idle tasks running is the rate with none, give or take the controllers' timing. (Each
    task's supervisor read its record every 5 s and on every re-list, and each usage report
    read every task's: 0.6 reads/s per task with the tests' 2 s report interval; one read per
    task every 5 s alone would be 6/s here.) Nor does it cost its record read again: what etcd
    sends stays about the same."""
    g = Gantry(instance=2)
    g.env["GANTRY_STORE"] = f"etcd://{etcd}/gantry-idle"
    try:
        g.start()
        ecs = g.client("ecs")
        register(ecs, "idle", [{"name": "app", "command": ["sh", "-c", "trap 'exit 0' TERM; while :; do sleep 1; done"],
                                 "stopTimeout": 2}])
        time.sleep(3)
        without = reads_per_second(etcd)
        arns = [t["taskArn"] for _ in range(3) for t in run(ecs, "default", "idle", count=10)]
        ecs.get_waiter("tasks_running").wait(cluster="default", tasks=arns, WaiterConfig={"Delay": 1, "MaxAttempts": 60})
        time.sleep(4)  # a usage report has read each new task's record (once)
        with_tasks = reads_per_second(etcd)
        assert with_tasks[0] - without[0] < 3.5, f"{with_tasks[0]:.1f} reads/s with 30 idle tasks, {without[0]:.1f} with none"
        # Nor records read again: a re-list and the controllers' listings of every task read
        # keys and revisions (about 50 B/s per idle task here; whole records were 1.2 KB/s).
        per_task = (with_tasks[1] - without[1]) / 30
        assert per_task < 300, f"{with_tasks[1]:.0f} B/s from etcd with 30 idle tasks, {without[1]:.0f} with none"
        for arn in arns:
            ecs.stop_task(cluster="default", task=arn)
        wait_stopped(ecs, "default", arns)
    finally:
        g.cleanup()


def test_a_bad_store_is_refused_clearly():
    g = Gantry(instance=2)
    try:
        for store, message in [("etcd://127.0.0.1:9", "reaching etcd"), ("mysql://x", "--store must be")]:
            p = subprocess.run([GANTRY, *g.node_args, "dev",
                                "--listen", "127.0.0.1:0", "--no-profile", "--store", store],
                               env=g.env, capture_output=True, text=True, timeout=60)
            assert p.returncode != 0 and message in p.stderr, (store, p.stderr)
    finally:
        g.cleanup()
