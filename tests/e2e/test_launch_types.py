"""Launch types and network modes: what ECS registers for EC2, where each definition can run,
bridge/host/none networking on Gantry's own nodes (its ECS container instances), container
limits, ulimits, read-only root filesystems and initProcessEnabled."""
import time
import urllib.request

import pytest
from botocore.exceptions import ClientError

from conftest import IMAGE, NETWORK, fixed_host_port, wait_stopped

HTTPD = "trap 'exit 0' TERM; echo up; httpd -f -p {port} -h /www & wait"


def code(e):
    return e.value.response["Error"]["Code"], e.value.response["Error"]["Message"]


def ec2_task(ecs, family, containers, **kw):
    for c in containers:
        c.setdefault("image", IMAGE)
    return ecs.register_task_definition(family=family, containerDefinitions=containers, **kw)["taskDefinition"]


def running(ecs, arn):
    ecs.get_waiter("tasks_running").wait(cluster="default", tasks=[arn], WaiterConfig={"Delay": 1, "MaxAttempts": 60})
    return ecs.describe_tasks(cluster="default", tasks=[arn])["tasks"][0]


def get(url, attempts=40):
    for _ in range(attempts):
        try:
            return urllib.request.urlopen(url, timeout=2).read().decode()
        except OSError:
            time.sleep(0.25)
    raise AssertionError(f"{url} never answered")


def stop(ecs, arn):
    ecs.stop_task(cluster="default", task=arn)
    return wait_stopped(ecs, "default", [arn])[0]


def test_ec2_definitions_register_and_fargate_refuses_them(ecs):
    td = ec2_task(ecs, "ec2-bridge", [{"name": "web", "memory": 64, "portMappings": [{"containerPort": 80}]}])
    assert td["compatibilities"] == ["EC2"] and "requiresCompatibilities" not in td and "cpu" not in td
    fargate_ok = ecs.register_task_definition(family="both", networkMode="awsvpc", cpu="256", memory="512",
                                              containerDefinitions=[{"name": "a", "image": IMAGE}])["taskDefinition"]
    assert fargate_ok["compatibilities"] == ["EC2", "FARGATE"]
    with pytest.raises(ClientError) as e:
        ecs.run_task(cluster="default", taskDefinition="ec2-bridge", launchType="FARGATE")
    assert code(e) == ("ClientException", "Task definition does not support launch_type FARGATE.")
    with pytest.raises(ClientError) as e:
        ecs.create_service(serviceName="nope", taskDefinition="ec2-bridge", desiredCount=1, launchType="FARGATE")
    assert code(e) == ("ClientException", "Task definition does not support launch_type FARGATE.")
    with pytest.raises(ClientError) as e:
        ecs.run_task(cluster="default", taskDefinition="ec2-bridge", launchType="EC2", networkConfiguration=NETWORK)
    assert code(e)[0] == "InvalidParameterException" and "not valid for the given networkMode" in code(e)[1]
    with pytest.raises(ClientError) as e:
        ecs.run_task(cluster="default", taskDefinition="both", launchType="EC2")
    assert code(e) == ("InvalidParameterException", "Network Configuration must be provided when networkMode 'awsvpc' is specified.")
    with pytest.raises(ClientError) as e:
        ecs.register_task_definition(family="nomem", containerDefinitions=[{"name": "a", "image": IMAGE}])
    assert code(e) == ("ClientException", "Invalid setting for container 'a'. At least one of 'memory' or 'memoryReservation' must be specified.")
    with pytest.raises(ClientError) as e:
        ecs.register_task_definition(family="vol", containerDefinitions=[{"name": "a", "image": IMAGE, "memory": 64,
                                     "mountPoints": [{"sourceVolume": "v", "containerPath": "/data"}]}])
    assert code(e)[0] == "ClientException" and "mountPoints" in code(e)[1]
    with pytest.raises(ClientError) as e:
        ecs.register_task_definition(family="fg", networkMode="bridge", requiresCompatibilities=["FARGATE"], cpu="256",
                                     memory="512", containerDefinitions=[{"name": "a", "image": IMAGE}])
    assert code(e)[0] == "ClientException" and "Fargate only supports network mode 'awsvpc'" in code(e)[1]


def test_bridge_mode_publishes_dynamic_and_fixed_host_ports(ecs):
    fixed = fixed_host_port()
    taken = fixed_host_port()
    while taken == fixed:
        taken = fixed_host_port()
    ec2_task(ecs, "bridge-web", [
        {"name": "dyn", "memory": 32, "command": ["sh", "-c", HTTPD.format(port=80)], "stopTimeout": 2,
         "portMappings": [{"containerPort": 80, "hostPort": 0}]},
        {"name": "fixed", "memory": 32, "command": ["sh", "-c", HTTPD.format(port=8080)], "stopTimeout": 2,
         "portMappings": [{"containerPort": 8080, "hostPort": fixed, "protocol": "tcp"}]}])
    r = ecs.run_task(cluster="default", taskDefinition="bridge-web")  # no launch type: EC2, as ECS
    assert r["failures"] == []
    t = running(ecs, r["tasks"][0]["taskArn"])
    assert t["launchType"] == "EC2" and t["attachments"] == [] and "platformVersion" not in t
    by = {c["name"]: c for c in t["containers"]}
    dyn = by["dyn"]["networkBindings"][0]
    assert dyn["containerPort"] == 80 and 32768 <= dyn["hostPort"] <= 60999 and dyn["protocol"] == "tcp"
    assert by["fixed"]["networkBindings"] == [{"bindIP": "0.0.0.0", "containerPort": 8080, "hostPort": fixed, "protocol": "tcp"}]
    assert "hello from gantry httpd" in get(f"http://127.0.0.1:{dyn['hostPort']}/index.html")
    assert "hello from gantry httpd" in get(f"http://127.0.0.1:{fixed}/index.html")
    # The fixed host port is taken while the task runs: a second copy is not placed.
    r = ecs.run_task(cluster="default", taskDefinition="bridge-web")
    assert r["tasks"] == [] and r["failures"][0]["reason"] == "RESOURCE:PORTS", r["failures"]
    stop(ecs, t["taskArn"])
    # A port something else on the node holds fails the start, with the reason.
    import socket
    with socket.socket() as held:
        held.bind(("0.0.0.0", taken))
        held.listen()
        ec2_task(ecs, "bridge-held", [{"name": "a", "memory": 16, "command": ["sleep", "30"],
                                       "portMappings": [{"containerPort": 80, "hostPort": taken}]}])
        arn = ecs.run_task(cluster="default", taskDefinition="bridge-held")["tasks"][0]["taskArn"]
        s = wait_stopped(ecs, "default", [arn])[0]
    assert s["stopCode"] == "TaskFailedToStart" and f"{taken}/tcp is not available" in s["stoppedReason"], s["stoppedReason"]
    with pytest.raises(OSError):
        urllib.request.urlopen(f"http://127.0.0.1:{fixed}/index.html", timeout=2)


def test_host_and_none_network_modes(ecs):
    port = fixed_host_port()
    ec2_task(ecs, "hostnet", [{"name": "web", "memory": 32, "command": ["sh", "-c", HTTPD.format(port=port)],
                               "stopTimeout": 2, "portMappings": [{"containerPort": port}]}], networkMode="host")
    t = running(ecs, ecs.run_task(cluster="default", taskDefinition="hostnet", launchType="EC2")["tasks"][0]["taskArn"])
    assert t["containers"][0]["networkBindings"][0]["hostPort"] == port
    assert "hello from gantry httpd" in get(f"http://127.0.0.1:{port}/index.html")
    stop(ecs, t["taskArn"])
    ec2_task(ecs, "nonet", [{"name": "app", "memory": 32, "command": ["sh", "-c", "ls /sys/class/net | tr '\\n' ' '"]}],
             networkMode="none")
    arn = ecs.run_task(cluster="default", taskDefinition="nonet")["tasks"][0]["taskArn"]
    t = wait_stopped(ecs, "default", [arn])[0]
    assert t["containers"][0]["exitCode"] == 0, t


def test_container_limits_ulimits_readonly_root_and_init(ecs, logs):
    from conftest import awslogs
    ec2_task(ecs, "limits", [
        {"name": "hog", "memory": 16, "essential": False,
         "command": ["sh", "-c", "x=$(head -c 100000000 /dev/zero | tr '\\0' a)"]},
        {"name": "probe", "memoryReservation": 32, "readonlyRootFilesystem": True,
         "ulimits": [{"name": "nofile", "softLimit": 1234, "hardLimit": 2345}],
         "logConfiguration": awslogs("/e2e/limits"),
         "command": ["sh", "-c", "echo nofile=$(ulimit -n); touch /x 2>/dev/null && echo writable || echo readonly; echo $AWS_EXECUTION_ENV; sleep 1"]}],
        memory="256")
    arn = ecs.run_task(cluster="default", taskDefinition="limits")["tasks"][0]["taskArn"]
    t = wait_stopped(ecs, "default", [arn])[0]
    by = {c["name"]: c for c in t["containers"]}
    assert by["hog"]["exitCode"] == 137 and "OutOfMemoryError" in by["hog"].get("reason", ""), by["hog"]
    tid = arn.rsplit("/", 1)[1]
    out = [e["message"] for e in logs.get_log_events(logGroupName="/e2e/limits", logStreamName=f"ecs/probe/{tid}")["events"]]
    assert out == ["nofile=1234", "readonly", "AWS_ECS_EC2"], out
    # initProcessEnabled: PID 1 is an init that forwards SIGTERM, so a shell loop without a
    # trap stops at once instead of waiting out its stopTimeout.
    ec2_task(ecs, "init", [{"name": "app", "memory": 32, "stopTimeout": 20, "linuxParameters": {"initProcessEnabled": True},
                            "command": ["sh", "-c", "while :; do sleep 0.2; done"]}])
    t = running(ecs, ecs.run_task(cluster="default", taskDefinition="init")["tasks"][0]["taskArn"])
    began = time.time()
    s = stop(ecs, t["taskArn"])
    assert time.time() - began < 10, "the init did not forward SIGTERM"
    assert s["containers"][0]["exitCode"] == 143, s["containers"][0]


# What a container's own /proc/self/status and a few privileged calls show about its sandbox.
PROBE_SANDBOX = ("grep -E '^(Seccomp|NoNewPrivs|CapEff):' /proc/self/status | tr -s '\\t' ' '; "
                 "busybox unshare -n true 2>/dev/null && echo unshare=ok || echo unshare=denied; "
                 "mkdir -p /m; busybox mount -t tmpfs none /m 2>/dev/null && echo mount=ok || echo mount=denied; "
                 "touch /tmp/f; chown 1 /tmp/f 2>/dev/null && echo chown=ok || echo chown=denied")


def test_capabilities_and_seccomp_follow_the_definition(ecs, logs):
    from conftest import awslogs
    cases = {
        # Docker's defaults: no namespaces, no mounts, chown allowed.
        "default": ({}, ["CapEff: 00000000a80425fb", "unshare=denied", "mount=denied", "chown=ok"]),
        # Everything dropped but CHOWN.
        "minimal": ({"capabilities": {"drop": ["ALL"], "add": ["CHOWN"]}},
                    ["CapEff: 0000000000000001", "unshare=denied", "mount=denied", "chown=ok"]),
        # SYS_ADMIN gives its syscalls back too; dropping CHOWN takes chown away.
        "admin": ({"capabilities": {"add": ["SYS_ADMIN"], "drop": ["CHOWN"]}},
                  ["CapEff: 00000000a82425fa", "unshare=ok", "mount=ok", "chown=denied"]),
    }
    arns = {}
    for name, (lp, _) in cases.items():
        ec2_task(ecs, f"caps-{name}", [{"name": "probe", "memory": 32, "linuxParameters": lp,
                                        "logConfiguration": awslogs("/e2e/caps"), "command": ["sh", "-c", PROBE_SANDBOX]}])
        arns[name] = ecs.run_task(cluster="default", taskDefinition=f"caps-{name}")["tasks"][0]["taskArn"]
    wait_stopped(ecs, "default", list(arns.values()))
    for name, (_, want) in cases.items():
        tid = arns[name].rsplit("/", 1)[1]
        out = [e["message"] for e in logs.get_log_events(logGroupName="/e2e/caps", logStreamName=f"ecs/probe/{tid}")["events"]]
        assert out[1:3] == ["NoNewPrivs: 1", "Seccomp: 2"], (name, out)
        assert [out[0]] + out[3:] == want, (name, out)
    # Fargate adds SYS_PTRACE only; unknown names are refused.
    with pytest.raises(ClientError) as e:
        ecs.register_task_definition(family="caps-fargate", networkMode="awsvpc", requiresCompatibilities=["FARGATE"],
                                     cpu="256", memory="512", containerDefinitions=[{
                                         "name": "a", "image": IMAGE, "linuxParameters": {"capabilities": {"add": ["NET_ADMIN"]}}}])
    assert "Fargate only supports adding the SYS_PTRACE kernel capability" in code(e)[1]
    with pytest.raises(ClientError) as e:
        ec2_task(ecs, "caps-bad", [{"name": "a", "memory": 32, "linuxParameters": {"capabilities": {"add": ["GOD_MODE"]}}}])
    assert "GOD_MODE is not a valid kernel capability" in code(e)[1]


def test_system_controls_set_namespaced_kernel_parameters(ecs, logs):
    """systemControls set the container's own network and IPC namespaces' parameters (the
    node's stay as they were); host mode cannot set network ones, and parameters that are not
    namespaced are refused."""
    from conftest import awslogs
    probe = "cat /proc/sys/net/ipv4/tcp_keepalive_time /proc/sys/kernel/shmmni"
    host_before = [open(p).read().strip() for p in ("/proc/sys/net/ipv4/tcp_keepalive_time", "/proc/sys/kernel/shmmni")]
    ec2_task(ecs, "sysctls", [{"name": "probe", "memory": 32, "logConfiguration": awslogs("/e2e/sysctls"),
                               "command": ["sh", "-c", probe],
                               "systemControls": [{"namespace": "net.ipv4.tcp_keepalive_time", "value": "321"},
                                                  {"namespace": "kernel.shmmni", "value": "1234"}]}])
    arn = ecs.run_task(cluster="default", taskDefinition="sysctls")["tasks"][0]["taskArn"]
    wait_stopped(ecs, "default", [arn])
    tid = arn.rsplit("/", 1)[1]
    out = [e["message"] for e in logs.get_log_events(logGroupName="/e2e/sysctls", logStreamName=f"ecs/probe/{tid}")["events"]]
    assert out == ["321", "1234"], out
    assert [open(p).read().strip() for p in ("/proc/sys/net/ipv4/tcp_keepalive_time", "/proc/sys/kernel/shmmni")] == host_before
    with pytest.raises(ClientError) as e:
        ec2_task(ecs, "sysctls-host", [{"name": "a", "memory": 32, "systemControls": [
            {"namespace": "net.core.somaxconn", "value": "1024"}]}], networkMode="host")
    assert code(e)[0] == "ClientException" and "network mode host" in code(e)[1]
    with pytest.raises(ClientError) as e:
        ec2_task(ecs, "sysctls-vm", [{"name": "a", "memory": 32, "systemControls": [
            {"namespace": "vm.swappiness", "value": "1"}]}])
    assert code(e)[0] == "ClientException" and "not a namespaced kernel parameter" in code(e)[1]
