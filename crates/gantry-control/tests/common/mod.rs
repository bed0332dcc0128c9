//! What the control plane's tests share: a clock the test moves, and the scope they act in.
#![allow(dead_code)] // each test binary uses a part

use gantry_control::Clock;
use gantry_types::arn::Scope;
use std::sync::atomic::{AtomicI64, Ordering};

/// Starts at 2027-01-15 and moves only when the test says so.
pub struct FakeClock(pub AtomicI64);

impl FakeClock {
    pub fn new() -> FakeClock {
        FakeClock(AtomicI64::new(1_800_000_000_000))
    }

    pub fn advance(&self, ms: i64) {
        self.0.fetch_add(ms, Ordering::SeqCst);
    }
}

impl Clock for FakeClock {
    fn now_ms(&self) -> i64 {
        self.0.load(Ordering::SeqCst)
    }
}

pub fn scope() -> Scope {
    Scope {
        account: "123456789012".into(),
        region: "us-east-1".into(),
    }
}

/// Registers the one fake node the tests place tasks on (4 cores, 8 GiB).
pub async fn register_node(c: &gantry_control::Control) {
    c.register_node(gantry_control::nodes::NodeSpec {
        name: "node-1".into(),
        zone: None,
        capacity_provider: None,
        cpu: 4096,
        memory: 8192,
        address: None,
        subnet: Some("10.0.1.0/24".into()),
    })
    .await
    .unwrap();
}

/// An awsvpcConfiguration in `register_node`'s subnet.
pub fn network() -> serde_json::Value {
    let subnet = gantry_control::ec2::subnet_id(&scope(), "node-1");
    serde_json::json!({"awsvpcConfiguration": {"subnets": [subnet]}})
}

/// An awsvpcConfiguration naming every registered node's subnet (each node's task network).
pub async fn every_subnet(c: &gantry_control::Control) -> serde_json::Value {
    let ids: Vec<String> = c
        .nodes()
        .await
        .unwrap()
        .iter()
        .filter(|n| n.spec.subnet.is_some())
        .map(|n| gantry_control::ec2::subnet_id(&scope(), &n.spec.name))
        .collect();
    serde_json::json!({"awsvpcConfiguration": {"subnets": ids}})
}

/// The default cluster and the `web` Fargate task definition (256 CPU, 512 MiB) the tests run.
pub async fn default_cluster_with_web(c: &gantry_control::Control) {
    c.create_cluster(&scope(), Some("default"), None, None).await.unwrap();
    c.register_task_definition(
        &scope(),
        serde_json::json!({"family": "web", "networkMode": "awsvpc", "requiresCompatibilities": ["FARGATE"],
               "cpu": "256", "memory": "512", "containerDefinitions": [{"name": "app", "image": "busybox"}]}),
    )
    .await
    .unwrap();
}

/// The default VPC as the API describes it to ELBv2: one subnet ("subnet-1", zone a) and
/// the default security group.
pub fn vpc() -> gantry_control::elb::Vpc {
    gantry_control::elb::Vpc {
        id: gantry_control::ec2::vpc_id(&scope()),
        subnets: vec![("subnet-1".into(), "us-east-1a".into())],
        groups: vec![gantry_control::ec2::default_group_id(&scope())],
    }
}

/// A Fargate task definition `family` whose `app` container listens on 8080.
pub async fn register_web_on_8080(c: &gantry_control::Control, family: &str) {
    c.register_task_definition(
        &scope(),
        serde_json::json!({"family": family, "networkMode": "awsvpc", "requiresCompatibilities": ["FARGATE"],
               "cpu": "256", "memory": "512", "containerDefinitions": [{"name": "app", "image": "busybox",
               "portMappings": [{"containerPort": 8080}]}]}),
    )
    .await
    .unwrap();
}

/// An application load balancer `name` in `vpc()`: its ARN.
pub async fn load_balancer(elb: &gantry_control::elb::Elb, name: &str) -> String {
    let out = elb
        .create_load_balancer(
            &scope(),
            serde_json::json!({"Name": name, "Subnets": ["subnet-1"]}),
            &vpc(),
        )
        .await
        .unwrap();
    out["LoadBalancers"][0]["LoadBalancerArn"].as_str().unwrap().to_string()
}

/// An HTTP target group `name` of `ip` targets on `port`: its ARN.
pub async fn target_group(elb: &gantry_control::elb::Elb, name: &str, port: i64) -> String {
    let out = elb
        .create_target_group(
            &scope(),
            serde_json::json!({"Name": name, "Protocol": "HTTP", "Port": port, "TargetType": "ip"}),
        )
        .await
        .unwrap();
    out["TargetGroups"][0]["TargetGroupArn"].as_str().unwrap().to_string()
}
