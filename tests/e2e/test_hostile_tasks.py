"""A hostile task against a victim on the same node, knowing everything DescribeTasks tells
(the victim's task id, address and container names): it cannot fetch the victim's role
credentials or metadata from its own endpoint, cannot see the victim's secrets or processes,
cannot reach the victim's port against the victim's security group, and cannot call the API
as the victim or as anyone without credentials."""
import json

from conftest import NETWORK, awslogs, execution_role, log_lines, register, wait_for

TRUST_ECS = {"Version": "2012-10-17", "Statement": [
    {"Effect": "Allow", "Principal": {"Service": "ecs-tasks.amazonaws.com"}, "Action": "sts:AssumeRole"}]}

# Each probe prints one line: NAME RESULT, from wget's and nc's output. The friend below is
# the control that the port probe can succeed.
ATTACK = r"""
probe() { printf '%s %s\n' "$1" "$2"; }
got() { grep -q "$1" && echo GOT || echo refused; }
probe own-creds "$(wget -q -O- "http://169.254.170.2:51679$AWS_CONTAINER_CREDENTIALS_RELATIVE_URI" 2>&1 | got AccessKeyId)"
probe creds-by-id "$(wget -q -O- "http://169.254.170.2:51679/v2/credentials/$VICTIM_ID" 2>&1 | got AccessKeyId)"
probe creds-port80 "$(wget -q -O- "http://169.254.170.2/v2/credentials/$VICTIM_ID" 2>&1 | got AccessKeyId)"
probe own-metadata "$(wget -q -O- "$ECS_CONTAINER_METADATA_URI_V4/task" 2>&1 | got TaskARN)"
probe metadata "$(wget -q -O- "http://169.254.170.2:51679/v4/$VICTIM_ID-web/task" 2>&1 | got TaskARN)"
probe victim-procs "$(cat /proc/[0-9]*/cmdline 2>/dev/null | tr '\0' ' ' | grep -c 'http[d]')"
probe environ "$(cat /proc/[0-9]*/environ 2>/dev/null | tr '\0' '\n' | grep -c '^DB_PASSWORD=')"
probe port "$(timeout 3 wget -q -O /dev/null "http://$VICTIM_IP:8080/" && echo REACHED || echo blocked)"
# The API relay answers, but nothing unsigned: MissingAuthenticationToken. (stdin is held
# open a moment: busybox nc closes its side at EOF, and the relay then closes both.)
probe api-unsigned "$( (printf 'POST / HTTP/1.1\r\nHost: x\r\nX-Amz-Target: AmazonEC2ContainerServiceV20141113.ListClusters\r\nContent-Type: application/x-amz-json-1.1\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}'; sleep 2) \
    | nc -w 3 169.254.170.2 51680 | tr -d '\r\n' | grep -o MissingAuthenticationToken | head -n 1)"
echo done
sleep 600
"""


def test_a_hostile_task_gets_nothing_of_its_neighbour(gantry):
    ecs, ec2, iam, sm = (gantry.client(s) for s in ("ecs", "ec2", "iam", "secretsmanager"))
    ecs.create_cluster(clusterName="hostile")
    role = iam.create_role(RoleName="victim-role", AssumeRolePolicyDocument=json.dumps(TRUST_ECS))["Role"]["Arn"]
    iam.put_role_policy(RoleName="victim-role", PolicyName="all", PolicyDocument=json.dumps(
        {"Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}]}))
    secret = sm.create_secret(Name="hostile/db", SecretString="victim-only-value")["ARN"]
    shield = ec2.create_security_group(GroupName="victim", Description="only friends")["GroupId"]
    friend = ec2.create_security_group(GroupName="victim-friend", Description="friends")["GroupId"]
    attacker_group = ec2.create_security_group(GroupName="attacker", Description="not a friend")["GroupId"]
    ec2.authorize_security_group_ingress(GroupId=shield, IpPermissions=[
        {"IpProtocol": "tcp", "FromPort": 8080, "ToPort": 8080, "UserIdGroupPairs": [{"GroupId": friend}]}])

    def net(group):
        return {"awsvpcConfiguration": {**NETWORK["awsvpcConfiguration"], "securityGroups": [group]}}

    victim_td = register(ecs, "victim", [{
        "name": "web", "command": ["sh", "-c", "httpd -f -p 8080 -h /www"],
        "secrets": [{"name": "DB_PASSWORD", "valueFrom": secret}]}],
        taskRoleArn=role, executionRoleArn=execution_role(iam))["taskDefinitionArn"]
    victim = ecs.run_task(cluster="hostile", taskDefinition=victim_td, launchType="FARGATE",
                          networkConfiguration=net(shield))["tasks"][0]
    ecs.get_waiter("tasks_running").wait(cluster="hostile", tasks=[victim["taskArn"]],
                                         WaiterConfig={"Delay": 1, "MaxAttempts": 60})
    described = ecs.describe_tasks(cluster="hostile", tasks=[victim["taskArn"]])["tasks"][0]
    victim_ip = next(d["value"] for d in described["attachments"][0]["details"] if d["name"] == "privateIPv4Address")
    victim_id = victim["taskArn"].rsplit("/", 1)[1]

    # The attacker has a role of its own too (so it has an endpoint and the relay).
    own = iam.create_role(RoleName="attacker-role", AssumeRolePolicyDocument=json.dumps(TRUST_ECS))["Role"]["Arn"]
    attacker_td = register(ecs, "attacker", [{
        "name": "x", "command": ["sh", "-c", ATTACK], "logConfiguration": awslogs("/hostile/attacker"),
        "environment": [{"name": "VICTIM_ID", "value": victim_id}, {"name": "VICTIM_IP", "value": victim_ip}]}],
        taskRoleArn=own)["taskDefinitionArn"]
    attacker = ecs.run_task(cluster="hostile", taskDefinition=attacker_td, launchType="FARGATE",
                            networkConfiguration=net(attacker_group))["tasks"][0]
    logs = gantry.client("logs")
    stream = f"ecs/x/{attacker['taskArn'].rsplit('/', 1)[1]}"

    lines = wait_for("the attacker's probes", lambda: log_lines(logs, "/hostile/attacker", stream), 90)
    found = dict(line.split(" ", 1) for line in lines if " " in line)
    # Its own endpoint answers it (so the refusals below are the endpoint's, not an outage).
    assert (found["own-creds"], found["own-metadata"]) == ("GOT", "GOT"), found
    assert found["creds-by-id"] == "refused", found
    assert found["creds-port80"] == "refused", found
    assert found["metadata"] == "refused", found
    assert found["victim-procs"] == "0", f"the attacker sees the victim's processes: {found}"
    assert found["environ"] == "0", found
    assert found["port"] == "blocked", found
    assert found["api-unsigned"] == "MissingAuthenticationToken", found
    # The control: a friend reaches the victim's port, and the victim's own endpoint answers it.
    friend_td = register(ecs, "friend", [{"name": "f", "command": ["sh", "-c", (
        'timeout 3 wget -q -O /dev/null "http://$VICTIM_IP:8080/" && echo port REACHED || echo port blocked; '
        'echo done; sleep 600')],
        "logConfiguration": awslogs("/hostile/friend"),
        "environment": [{"name": "VICTIM_IP", "value": victim_ip}]}])["taskDefinitionArn"]
    pal = ecs.run_task(cluster="hostile", taskDefinition=friend_td, launchType="FARGATE",
                       networkConfiguration=net(friend))["tasks"][0]

    friend_stream = f"ecs/f/{pal['taskArn'].rsplit('/', 1)[1]}"
    assert "port REACHED" in wait_for("the friend's probe", lambda: log_lines(logs, "/hostile/friend", friend_stream), 90)
    for t in (victim, attacker, pal):
        ecs.stop_task(cluster="hostile", task=t["taskArn"])
