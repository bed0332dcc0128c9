"""OpenTelemetry traces: a Gantry with OTEL_EXPORTER_OTLP_ENDPOINT set exports each task start
(trace id = task id; pull, sandbox and start phases under a root span) and each API request
(joining the caller's trace when it sends a W3C traceparent) over OTLP/HTTP. The receiver
parses every export with the official OTLP protobuf definitions (opentelemetry-proto), so a
field Gantry got wrong fails the parse. `gantry debug trace` prints the same timeline."""
import base64
import json
import os
import subprocess
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from google.protobuf import json_format
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from conftest import GANTRY, KEY, REGION, SECRET, Gantry, register, run, wait_for

TRACE_PARENT = ("4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7")


def to_proto_json(body):
    """OTLP's JSON carries ids in hex; protobuf's JSON mapping wants base64 for bytes."""
    doc = json.loads(body)
    for rs in doc.get("resourceSpans", []):
        for ss in rs.get("scopeSpans", []):
            for s in ss.get("spans", []):
                for k in ("traceId", "spanId", "parentSpanId"):
                    if s.get(k):
                        s[k] = base64.b64encode(bytes.fromhex(s[k])).decode()
    return json.dumps(doc)


class Receiver:
    def __init__(self):
        self.spans, self.errors = [], []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers["Content-Length"]))
                try:
                    assert self.path == "/v1/traces", self.path
                    assert self.headers["Content-Type"] == "application/json"
                    req = json_format.Parse(to_proto_json(body), ExportTraceServiceRequest())
                    for rs in req.resource_spans:
                        service = {a.key: a.value.string_value for a in rs.resource.attributes}["service.name"]
                        for ss in rs.scope_spans:
                            for s in ss.spans:
                                receiver.spans.append((service, s))
                    self.send_response(200)
                except Exception as e:  # the test fails on it below
                    receiver.errors.append(repr(e))
                    self.send_response(400)
                self.send_header("Content-Type", "application/json")
                self.end_headers()
                self.wfile.write(b"{}")

            def log_message(self, *args):
                pass
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.endpoint = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def named(self, name):
        return [s for _, s in self.spans if s.name == name]


@pytest.fixture(scope="module")
def traced():
    receiver = Receiver()
    g = Gantry(instance=8)
    g.env["OTEL_EXPORTER_OTLP_ENDPOINT"] = receiver.endpoint
    try:
        g.start()
        yield g, receiver
    finally:
        g.cleanup()
        receiver.server.shutdown()


def test_task_starts_and_api_requests_are_exported(traced):
    g, receiver = traced
    ecs = g.client("ecs")
    ecs.create_cluster(clusterName="default")
    td = register(ecs, "traced", [{"name": "app", "command": ["sleep", "600"]}])
    task = run(ecs, "default", td["taskDefinitionArn"])[0]
    task_id = task["taskArn"].split("/")[-1]
    ecs.get_waiter("tasks_running").wait(cluster="default", tasks=[task["taskArn"]], WaiterConfig={"Delay": 1, "MaxAttempts": 60})

    # The start: a root span whose trace id is the task id, the phases under it, in order.
    def start_spans():
        mine = [s for _, s in receiver.spans if s.trace_id.hex() == task_id]
        return mine if len(mine) == 4 else None
    spans = {s.name: s for s in wait_for("the task start's spans", start_spans, 20)}
    assert not receiver.errors, receiver.errors
    root = spans["task start"]
    assert root.parent_span_id == b""
    attrs = {a.key: a.value.string_value for a in root.attributes}
    assert attrs["aws.ecs.task.arn"] == task["taskArn"] and attrs["aws.ecs.task.family"] == "traced"
    phases = [spans[p] for p in ("pull", "sandbox", "start")]
    assert all(p.parent_span_id == root.span_id for p in phases)
    assert root.start_time_unix_nano == phases[0].start_time_unix_nano
    for a, b in zip(phases, phases[1:]):
        assert a.end_time_unix_nano == b.start_time_unix_nano
    assert phases[-1].end_time_unix_nano == root.end_time_unix_nano
    # The task's record says the same: RUNNING at the root span's end.
    described = ecs.describe_tasks(cluster="default", tasks=[task["taskArn"]])["tasks"][0]
    assert abs(described["startedAt"].timestamp() - root.end_time_unix_nano / 1e9) < 0.002

    # API requests: server spans named Service.Operation; a caller's traceparent is joined.
    run_task = wait_for("the RunTask span", lambda: receiver.named("ecs.RunTask"), 10)[0]
    attrs = {a.key: (a.value.string_value or a.value.int_value) for a in run_task.attributes}
    assert attrs == {"rpc.system": "aws-api", "rpc.service": "ecs", "rpc.method": "RunTask",
                     "http.response.status_code": 200}, attrs
    assert run_task.kind == 2  # SPAN_KIND_SERVER

    def add_traceparent(request, **_):
        request.headers["traceparent"] = f"00-{TRACE_PARENT[0]}-{TRACE_PARENT[1]}-01"
    ecs.meta.events.register("before-sign.ecs.ListClusters", add_traceparent)
    ecs.list_clusters()
    joined = wait_for("the ListClusters span", lambda: receiver.named("ecs.ListClusters"), 10)[0]
    assert (joined.trace_id.hex(), joined.parent_span_id.hex()) == TRACE_PARENT
    # A failed request is a span too, with its status code.
    with pytest.raises(Exception):
        ecs.describe_services(cluster="nope", services=["x"])
    failed = wait_for("the failed call's span", lambda: receiver.named("ecs.DescribeServices"), 10)[0]
    codes = {a.value.int_value for a in failed.attributes if a.key == "http.response.status_code"}
    assert codes == {400}
    assert not receiver.errors, receiver.errors
    ecs.stop_task(cluster="default", task=task["taskArn"])

    # `gantry debug trace` prints the timeline from the task's record.
    env = dict(os.environ, GANTRY_ENDPOINT=g.endpoint, AWS_ACCESS_KEY_ID=KEY, AWS_SECRET_ACCESS_KEY=SECRET,
               AWS_REGION=REGION, AWS_CONFIG_FILE="/dev/null", AWS_SHARED_CREDENTIALS_FILE="/dev/null")
    p = subprocess.run([GANTRY, "debug", "trace", task_id], capture_output=True, text=True, env=env)
    assert p.returncode == 0, p.stderr
    for phase in ("provisioning", "image pull", "sandbox", "start"):
        assert f"  {phase}" in p.stdout, p.stdout
    total = (described["startedAt"] - described["createdAt"]).total_seconds() * 1000
    assert f"{total:.1f} ms created to RUNNING" in p.stdout, (total, p.stdout)
    p = subprocess.run([GANTRY, "debug", "trace", "0" * 32], capture_output=True, text=True, env=env)
    assert p.returncode != 0 and "MISSING" in p.stderr, p.stderr
