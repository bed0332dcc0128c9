"""The web console in a real headless Chromium (Debian's chromium and chromedriver, driven by
selenium) against a running Gantry with real tasks: sign-in is required, every page renders,
what the pages show matches the API, and the console only reads. Screenshots of each page are
kept under target/e2e-artifacts/console (or $GANTRY_E2E_ARTIFACTS)."""
import datetime
import json
import os
import shutil
import subprocess
import time

import pytest
import requests
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support import expected_conditions as EC
from selenium.webdriver.support.ui import WebDriverWait

from conftest import GANTRY, KEY, NETWORK, REGION, ROOT, SECRET, awslogs, register, run, subnets, wait_for, wait_stopped

ARTIFACTS = os.environ.get("GANTRY_E2E_ARTIFACTS", os.path.join(ROOT, "target", "e2e-artifacts", "console"))
HEADERS = {"X-Gantry-Console": "1"}
CLUSTER = "console"


@pytest.fixture(scope="module")
def browser():
    chromium, driver = shutil.which("chromium"), shutil.which("chromedriver")
    assert chromium and driver, "chromium and chromium-driver are needed (scripts/install-deps.sh installs them)"
    os.makedirs(ARTIFACTS, exist_ok=True)
    opts = webdriver.ChromeOptions()
    opts.binary_location = chromium
    for a in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1400,1100",
              "--no-first-run", "--disable-extensions", "--disable-background-networking", "--disable-sync",
              "--disable-component-update", "--disable-default-apps", "--no-proxy-server"):
        opts.add_argument(a)
    b = webdriver.Chrome(service=Service(driver), options=opts)
    b.set_page_load_timeout(30)
    try:
        yield b
    finally:
        b.quit()


# A web server whose /cgi-bin/fail answers 500 (busybox httpd passes a CGI's own status line).
SERVE = ("trap 'exit 0' TERM; echo hello from the console test; mkdir -p /tmp/w/cgi-bin; echo ok > /tmp/w/index.html; "
         "printf '#!/bin/sh\\nprintf \"HTTP/1.1 500 Oops\\\\r\\\\nContent-Type: text/plain\\\\r\\\\n\\\\r\\\\nbroken\"\\n' "
         "> /tmp/w/cgi-bin/fail; chmod +x /tmp/w/cgi-bin/fail; httpd -f -p 8080 -h /tmp/w & wait")
GOOD, TARGET_5XX, ELB_5XX = 200, 10, 10


@pytest.fixture(scope="module")
def workload(gantry):
    """A service of two web tasks behind a load balancer, tagged with a 99.5% SLO, that
    answered GOOD requests well and TARGET_5XX + ELB_5XX badly; and a task that failed."""
    ecs, elb = gantry.client("ecs"), gantry.client("elbv2")
    ecs.create_cluster(clusterName=CLUSTER, settings=[{"name": "containerInsights", "value": "enabled"}])
    td = register(ecs, "console-web", [{"name": "app", "command": ["sh", "-c", SERVE],
                                         "portMappings": [{"containerPort": 8080}],
                                         "logConfiguration": awslogs("/console/web")}])
    tg = elb.create_target_group(Name="console-web", Protocol="HTTP", Port=8080, TargetType="ip", HealthCheckPath="/",
                                 HealthCheckIntervalSeconds=5, HealthCheckTimeoutSeconds=2, HealthyThresholdCount=2,
                                 UnhealthyThresholdCount=2)["TargetGroups"][0]["TargetGroupArn"]
    lb = elb.create_load_balancer(Name="console-lb", Subnets=subnets())["LoadBalancers"][0]
    listener = elb.create_listener(LoadBalancerArn=lb["LoadBalancerArn"], Protocol="HTTP", Port=80, DefaultActions=[
        {"Type": "forward", "TargetGroupArn": tg}])["Listeners"][0]["ListenerArn"]
    elb.create_rule(ListenerArn=listener, Priority=10, Conditions=[{"Field": "path-pattern", "Values": ["/broken"]}],
                    Actions=[{"Type": "fixed-response", "FixedResponseConfig": {"StatusCode": "503"}}])
    ecs.create_service(cluster=CLUSTER, serviceName="web", taskDefinition=td["taskDefinitionArn"], desiredCount=2,
                       networkConfiguration=NETWORK, launchType="FARGATE",
                       loadBalancers=[{"targetGroupArn": tg, "containerName": "app", "containerPort": 8080}],
                       tags=[{"key": "gantry:slo", "value": "99.5"}, {"key": "team", "value": "storefront"}],
                       propagateTags="SERVICE")
    failing = register(ecs, "console-fails", [{"name": "app", "command": ["sh", "-c", "echo giving up; exit 3"]}])
    failed = run(ecs, CLUSTER, failing["taskDefinitionArn"])
    wait_stopped(ecs, CLUSTER, [failed[0]["taskArn"]])
    ecs.get_waiter("services_stable").wait(cluster=CLUSTER, services=["web"], WaiterConfig={"Delay": 1, "MaxAttempts": 90})
    base = f"http://{lb['DNSName']}"
    codes = [requests.get(f"{base}/", timeout=5).status_code for _ in range(GOOD)]
    codes += [requests.get(f"{base}/cgi-bin/fail", timeout=5).status_code for _ in range(TARGET_5XX)]
    codes += [requests.get(f"{base}/broken", timeout=5).status_code for _ in range(ELB_5XX)]
    assert codes == [200] * GOOD + [500] * TARGET_5XX + [503] * ELB_5XX, codes
    yield {"failed": failed[0]["taskArn"]}
    ecs.delete_service(cluster=CLUSTER, service="web", force=True)
    elb.delete_load_balancer(LoadBalancerArn=lb["LoadBalancerArn"])


def shot(b, name):
    b.save_screenshot(os.path.join(ARTIFACTS, f"{name}.png"))


def wait_css(b, css, timeout=20):
    return WebDriverWait(b, timeout).until(EC.presence_of_element_located((By.CSS_SELECTOR, css)))


def page(b, gantry, hash_path, ready_css, name):
    """Opens a page of the console and waits until `ready_css` is on it.

    Through a blank page first: going from /console/ to /console/#/ would be a same-document
    navigation whose hashchange renders the page again, replacing an element found in the
    first rendering (a stale element under a later read)."""
    b.get("about:blank")
    b.get(f"{gantry.endpoint}/console/#{hash_path}")
    try:
        el = wait_css(b, ready_css)
    except Exception:
        shot(b, f"{name}-failed")
        errors = b.find_elements(By.ID, "page-error")
        raise AssertionError(f"{hash_path}: {ready_css} never appeared; {[e.text for e in errors]}")
    shot(b, name)
    return el


def sign_in(b, gantry, secret=SECRET):
    b.get(f"{gantry.endpoint}/console/")
    form = wait_css(b, "form#login")
    form.find_element(By.ID, "akid").send_keys(KEY)
    form.find_element(By.ID, "secret").send_keys(secret)
    form.find_element(By.ID, "signin").click()


def test_sign_in_is_required(gantry, browser):
    s = requests.Session()
    r = s.get(f"{gantry.endpoint}/console/api/session", headers=HEADERS)
    assert r.status_code == 401 and r.json()["__type"] == "UnrecognizedClientException"
    r = s.post(f"{gantry.endpoint}/console/api/call/ecs/ListClusters", json={}, headers=HEADERS)
    assert r.status_code == 401
    # The page itself loads, and shows only the sign-in form.
    browser.delete_all_cookies()
    sign_in(browser, gantry, secret="not-the-secret")
    err = WebDriverWait(browser, 10).until(lambda b: b.find_element(By.ID, "login-error").text)
    assert "not valid" in err
    assert browser.find_element(By.ID, "top").get_attribute("hidden") is not None
    shot(browser, "login-refused")
    sign_in(browser, gantry)
    wait_css(browser, "#slo-summary")
    assert KEY in browser.find_element(By.ID, "who").text
    shot(browser, "executive-first")


def login(gantry):
    s = requests.Session()
    r = s.post(f"{gantry.endpoint}/console/login", json={"accessKeyId": KEY, "secretAccessKey": SECRET, "region": REGION},
               headers=HEADERS)
    assert r.status_code == 200, r.text
    cookie = r.headers["set-cookie"]
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and "Path=/console" in cookie
    return s


def test_the_console_only_reads_and_refuses_forgeries(gantry):
    s = login(gantry)
    base = f"{gantry.endpoint}/console"
    assert s.post(f"{base}/api/call/ecs/ListClusters", json={}, headers=HEADERS).status_code == 200
    # Writes are refused, whatever the service.
    for svc, op in [("ecs", "DeleteCluster"), ("ecs", "UpdateService"), ("monitoring", "PutMetricData"), ("logs", "DeleteLogGroup")]:
        r = s.post(f"{base}/api/call/{svc}/{op}", json={}, headers=HEADERS)
        assert r.status_code == 403 and r.json()["__type"] == "AccessDeniedException", (op, r.text)
    # A call without the console's header (a cross-site form could send the cookie) is refused.
    r = s.post(f"{base}/api/call/ecs/ListClusters", json={})
    assert r.status_code == 403
    # Unknown operations, malformed input, oversized bodies: clear errors.
    r = s.post(f"{base}/api/call/ecs/DescribeNothing", json={}, headers=HEADERS)
    assert r.status_code == 400 and r.json()["__type"] == "UnknownOperationException"
    r = s.post(f"{base}/api/call/ecs/ListClusters", data="[1,2]", headers=HEADERS)
    assert r.status_code == 400 and r.json()["__type"] == "SerializationException"
    r = s.post(f"{base}/api/call/ecs/ListClusters", data="x" * (300 << 10), headers=HEADERS)
    assert r.status_code == 400
    r = s.post(f"{base}/login", data="{", headers=HEADERS)
    assert r.status_code == 400 and r.json()["__type"] == "ValidationException"
    # A tampered cookie (a longer expiry under the same MAC) is refused.
    value = s.cookies.get("gantry_console")
    parts = value.split(".")
    parts[3] = str(int(parts[3]) + 3600)
    forged = requests.get(f"{base}/api/session", headers=HEADERS, cookies={"gantry_console": ".".join(parts)})
    assert forged.status_code == 401
    # The page is served with a policy that forbids inline and foreign scripts.
    r = requests.get(f"{base}/")
    assert r.status_code == 200 and "default-src 'self'" in r.headers["content-security-policy"]


def test_pages_render_and_match_the_api(gantry, ecs, browser, workload):
    browser.delete_all_cookies()
    sign_in(browser, gantry)
    wait_css(browser, "#slo-summary")
    service = ecs.describe_services(cluster=CLUSTER, services=["web"])["services"][0]
    cluster = ecs.describe_clusters(clusters=[CLUSTER])["clusters"][0]

    # Executive: the service's card, its SLO from the tag, availability from its requests
    # (once the load balancer's counts are published).
    s = login(gantry)
    total = GOOD + TARGET_5XX + ELB_5XX

    def counted():
        d = s.get(f"{gantry.endpoint}/console/api/dashboard/executive", headers=HEADERS).json()
        row = next(r for r in d["services"] if r["service"] == "web")
        return row if row["requests"] == total else None
    row = wait_for("the requests counted", counted, 30)
    assert row["failures"] == TARGET_5XX + ELB_5XX and row["source"] == "requests", row
    card = page(browser, gantry, "/", f"[data-service='{CLUSTER}/web']", "executive")
    assert "SLO 99.50%" in card.text and "Tasks 2/2" in card.text, card.text
    shown = float(card.find_element(By.CSS_SELECTOR, "[data-availability]").get_attribute("data-availability"))
    assert abs(shown - GOOD / total) < 1e-9, shown
    # 20 failures of 220 against a 0.5% budget: overspent, drawn as a chart.
    assert float(card.find_element(By.CSS_SELECTOR, "[data-budget]").get_attribute("data-budget")) < 0
    card.find_element(By.CSS_SELECTOR, "svg[data-chart='availability'] path")

    row = page(browser, gantry, "/clusters", f"tr[data-cluster='{CLUSTER}']", "clusters")
    cells = [td.text for td in row.find_elements(By.TAG_NAME, "td")]
    assert cells[3] == str(cluster["runningTasksCount"]), cells

    row = page(browser, gantry, f"/clusters/{CLUSTER}", "tr[data-service='web']", "cluster")
    assert row.get_attribute("data-running") == str(service["runningCount"]) == "2"
    running = [t for t in ecs.list_tasks(cluster=CLUSTER, serviceName="web")["taskArns"]]
    shown = {e.get_attribute("data-task") for e in browser.find_elements(By.CSS_SELECTOR, "tr[data-task]")}
    assert {a.split("/")[-1] for a in running} <= shown

    # Container Insights (on for this cluster) has the tasks' network traffic: the requests.
    cw = gantry.client("cloudwatch")

    def received():
        now = datetime.datetime.now(datetime.timezone.utc)
        points = cw.get_metric_statistics(
            Namespace="ECS/ContainerInsights", MetricName="NetworkRxBytes", Statistics=["Maximum"], Period=60,
            Dimensions=[{"Name": "ClusterName", "Value": CLUSTER}, {"Name": "ServiceName", "Value": "web"}],
            StartTime=now - datetime.timedelta(minutes=10), EndTime=now + datetime.timedelta(minutes=1))["Datapoints"]
        return any(p["Maximum"] > 0 for p in points)
    wait_for("network bytes in Container Insights", received, 30)

    # The service's debug view: deployments with progress, request, latency and network
    # charts, events.
    page(browser, gantry, f"/services/{CLUSTER}/web", "#deployments tr[data-deployment]", "service")
    for chart in ("requests", "latency", "network"):
        browser.find_element(By.CSS_SELECTOR, f"svg[data-chart='{chart}'] path")
    primary = service["deployments"][0]
    dep = browser.find_element(By.CSS_SELECTOR, f"tr[data-deployment='{primary['id']}']")
    assert f"{primary['runningCount']}/{primary['desiredCount']}" in dep.text
    events = browser.find_element(By.ID, "events").text
    assert service["events"][0]["message"] in events

    # A task: its start-time phases and its live log tail.
    task_id = running[0].split("/")[-1]
    page(browser, gantry, f"/tasks/{CLUSTER}/{task_id}", "#phases [data-phase]", "task")
    phases = {e.get_attribute("data-phase") for e in browser.find_elements(By.CSS_SELECTOR, "#phases [data-phase]")}
    assert {"image pull", "starting"} <= phases, phases
    main_text = browser.find_element(By.TAG_NAME, "main").text
    assert "null" not in main_text and "undefined" not in main_text, main_text
    WebDriverWait(browser, 20).until(
        lambda b: "hello from the console test" in b.find_element(By.CSS_SELECTOR, "pre.logs").text)
    shot(browser, "task-logs")

    # On-call: the service burns its budget fast enough to page; the failed task is listed
    # with the API's stop reason.
    failed = ecs.describe_tasks(cluster=CLUSTER, tasks=[workload["failed"]])["tasks"][0]
    page(browser, gantry, "/oncall", "[data-section='failures']", "oncall")
    burning = browser.find_element(By.CSS_SELECTOR, "[data-section='burning']").text
    assert f"{CLUSTER}/web" in burning and "page" in burning, burning
    text = browser.find_element(By.CSS_SELECTOR, "[data-section='failures']").text
    assert workload["failed"].split("/")[-1] in text and failed["stoppedReason"] in text

    # Task definitions and logs.
    page(browser, gantry, "/taskdefs", "table a", "taskdefs")
    assert "console-web:1" in browser.find_element(By.TAG_NAME, "main").text
    page(browser, gantry, "/logs", "tr[data-group='/console/web']", "logs")

    # Signing out returns to the form; the pages need a new sign-in.
    browser.find_element(By.ID, "logout").click()
    wait_css(browser, "form#login")
    page(browser, gantry, "/clusters", "form#login", "signed-out")


def test_cost_is_metered_per_minute_and_reported(gantry, workload):
    """`gantry cost` reports the service's cost once a whole minute of it has been metered."""
    env = dict(os.environ, GANTRY_ENDPOINT=gantry.endpoint, AWS_ACCESS_KEY_ID=KEY, AWS_SECRET_ACCESS_KEY=SECRET,
               AWS_REGION=REGION, AWS_CONFIG_FILE="/dev/null", AWS_SHARED_CREDENTIALS_FILE="/dev/null")

    def cost(*args):
        p = subprocess.run([GANTRY, "cost", "--json", "--since", "1h", *args], capture_output=True, text=True, env=env)
        assert p.returncode == 0, p.stderr
        return json.loads(p.stdout)

    def web():
        return next((r for r in cost() if r.get("ServiceName") == "web" and r["ClusterName"] == CLUSTER), None)
    row = wait_for("a metered minute of the web service", web, 90, poll=2)
    # Two tasks of 0.25 vCPU and 0.5 GB: at most 2 x 0.25 vCPU-hours per hour of window.
    assert 0 < row["vcpuHours"] <= 0.5 and abs(row["gbHours"] - 2 * row["vcpuHours"]) < 1e-9, row
    expected = row["vcpuHours"] * 0.04048 + row["gbHours"] * 0.004445
    assert abs(row["cost"] - expected) < 1e-9, row
    # By the tag the service propagated to its tasks.
    teams = cost("--by", "tag:team")
    assert any(r["TagValue"] == "storefront" and r["cost"] > 0 for r in teams), teams
    p = subprocess.run([GANTRY, "cost", "--by", "zone"], capture_output=True, text=True, env=env)
    assert p.returncode != 0 and "expected cluster, service or tag:KEY" in p.stderr
    # PutMetricData cannot write into the cost namespace.
    r = gantry.aws("cloudwatch", "put-metric-data", "--namespace", "Gantry/Cost", "--metric-name", "Cost",
                   "--value", "1", check=False)[1]
    assert r.returncode != 0 and "reserved" in r.stderr
