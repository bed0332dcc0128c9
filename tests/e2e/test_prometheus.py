"""Prometheus: the shipped rules pass `promtool check rules` and their unit tests, and a real
Prometheus (Debian's) scraping `gantry dev` sees the SLI metrics and fires the availability
burn-rate alert during an injected outage. The test loads the rules with their windows
divided by 60 (1h -> 60s, 5m -> 5s), so an outage of seconds burns like one of minutes."""
import json
import os
import re
import shutil
import subprocess
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request

import pytest

from conftest import Gantry, NETWORK, ROOT, free_port, register, wait_for

RULES = os.path.join(ROOT, "deploy", "prometheus")


def test_the_rules_check_and_their_unit_tests_pass():
    for args in (["check", "rules", "gantry-rules.yml"], ["test", "rules", "gantry-rules.test.yml"]):
        p = subprocess.run(["promtool", *args], cwd=RULES, capture_output=True, text=True)
        assert p.returncode == 0, p.stdout + p.stderr
        assert "SUCCESS" in p.stdout


def scaled_rules(text):
    """The rules with every range and interval 60 times shorter."""
    units = {"m": 1, "h": 60}

    def shrink(m):
        seconds = int(m.group(1)) * units[m.group(2)]  # minutes -> seconds after /60
        return f"[{seconds}s]"
    text = re.sub(r"\[(\d+)([mh])\]", shrink, text)
    return text.replace("interval: 30s", "interval: 1s")


@pytest.fixture
def prometheus(gantry):
    d = tempfile.mkdtemp(prefix="gantry-prom-", dir="/var/tmp")
    with open(os.path.join(RULES, "gantry-rules.yml")) as f:
        rules = scaled_rules(f.read())
    with open(os.path.join(d, "rules.yml"), "w") as f:
        f.write(rules)
    target = gantry.endpoint.removeprefix("http://")
    with open(os.path.join(d, "prometheus.yml"), "w") as f:
        f.write(f"""global:
  scrape_interval: 1s
  evaluation_interval: 1s
rule_files: [rules.yml]
scrape_configs:
  - job_name: gantry
    metrics_path: /metrics
    static_configs:
      - targets: ["{target}"]
""")
    port = free_port()
    log = open(os.path.join(d, "prometheus.log"), "w")
    proc = subprocess.Popen(["prometheus", f"--config.file={d}/prometheus.yml", f"--storage.tsdb.path={d}/data",
                             f"--web.listen-address=127.0.0.1:{port}"], stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 30
        while True:
            try:
                urllib.request.urlopen(f"{url}/-/ready", timeout=1).read()
                break
            except OSError:
                assert proc.poll() is None, open(os.path.join(d, "prometheus.log")).read()
                assert time.time() < deadline, "prometheus never became ready"
                time.sleep(0.2)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
        shutil.rmtree(d, ignore_errors=True)


def api(url, path, **params):
    q = urllib.parse.urlencode(params)
    with urllib.request.urlopen(f"{url}{path}?{q}", timeout=5) as r:
        body = json.loads(r.read())
    assert body["status"] == "success", body
    return body["data"]


def value(url, query):
    r = api(url, "/api/v1/query", query=query)["result"]
    return [float(x["value"][1]) for x in r]


def test_a_real_prometheus_scrapes_gantry_and_pages_on_an_outage(gantry, ecs, prometheus):
    ecs.create_cluster(clusterName="slo")
    register(ecs, "slo-good", [{"name": "app", "command": ["sleep", "3600"]}])
    register(ecs, "slo-bad", [{"name": "app", "command": ["sh", "-c", "exit 1"]}])
    ecs.create_service(cluster="slo", serviceName="web", taskDefinition="slo-good", desiredCount=1,
                       networkConfiguration=NETWORK, launchType="FARGATE",
                       deploymentConfiguration={"minimumHealthyPercent": 0, "maximumPercent": 100})
    ecs.get_waiter("services_stable").wait(cluster="slo", services=["web"], WaiterConfig={"Delay": 1, "MaxAttempts": 60})
    web = 'gantry_service_task_availability{cluster="slo",service="web"}'
    wait_for("the service's availability in Prometheus", lambda: value(prometheus, web) == [1.0], 30)
    assert value(prometheus, 'sum(gantry_api_requests_total{service="ecs"})')[0] > 0
    assert value(prometheus, 'gantry_task_start_seconds_count{phase="total"}')[0] >= 1
    assert value(prometheus, 'gantry_service_cost_dollars_per_hour{service="web"}')[0] > 0
    # Give the (scaled) long window a minute of good history, then break the service: its one
    # task is stopped for a revision that crashes at once.
    time.sleep(5)
    ecs.update_service(cluster="slo", service="web", taskDefinition="slo-bad")

    def firing():
        alerts = api(prometheus, "/api/v1/alerts")["alerts"]
        return [a for a in alerts if a["labels"]["alertname"] == "GantryServiceAvailabilityBudgetBurn"
                and a["labels"].get("service") == "web" and a["state"] == "firing"]
    alert = wait_for("the availability alert to fire", firing, 60)[0]
    assert alert["labels"]["severity"] == "page"
    assert value(prometheus, web) == [0.0]
    ecs.update_service(cluster="slo", service="web", taskDefinition="slo-good")
    wait_for("availability back", lambda: value(prometheus, web) == [1.0], 60)
    ecs.delete_service(cluster="slo", service="web", force=True)


def test_metrics_are_open_by_default_and_can_require_a_token(gantry):
    with urllib.request.urlopen(f"{gantry.endpoint}/metrics", timeout=5) as r:
        text = r.read().decode()
        assert r.headers["content-type"].startswith("text/plain; version=0.0.4")
    assert "# TYPE gantry_api_requests_total counter" in text
    assert "gantry_state_readable 1" in text
    g = Gantry(instance=4)
    g.env["GANTRY_METRICS_TOKEN"] = "s3cret"
    try:
        g.start()
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "Basic s3cret"}):
            req = urllib.request.Request(f"{g.endpoint}/metrics", headers=headers)
            with pytest.raises(urllib.error.HTTPError) as e:
                urllib.request.urlopen(req, timeout=5)
            assert e.value.code == 401
        req = urllib.request.Request(f"{g.endpoint}/metrics", headers={"Authorization": "Bearer s3cret"})
        with urllib.request.urlopen(req, timeout=5) as r:
            assert "gantry_state_readable 1" in r.read().decode()
    finally:
        g.stop()
        g.cleanup()
