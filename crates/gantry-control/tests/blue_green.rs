//! Blue/green through the service controller, over a real (in-memory SQLite) store with a
//! fake clock: the test plays the node (tasks run, get addresses, stop when told) and the
//! health checker (targets of good tasks healthy, of broken ones unhealthy), and checks after
//! every controller pass that production traffic always has a target to go to.

use gantry_control::elb::{Elb, TargetState};
use gantry_control::services::{CreateServiceRequest, UpdateServiceRequest};
use gantry_control::Control;
use gantry_store::{SqliteStore, Store};
use serde_json::{json, Value};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

mod common;

use common::{scope, FakeClock};

struct Setup {
    c: Control,
    elb: Elb,
    clock: Arc<FakeClock>,
    groups: [String; 2],
    production_rule: String,
}

async fn group(elb: &Elb, name: &str) -> String {
    let arn = common::target_group(elb, name, 8080).await;
    elb.modify_target_group_attributes(
        &scope(),
        json!({"TargetGroupArn": arn, "Attributes": [{"Key": "deregistration_delay.timeout_seconds", "Value": "5"}]}),
    )
    .await
    .unwrap();
    arn
}

/// Three revisions of `bg` (2 is a broken release, 3 one whose checks never finish), groups
/// a and b behind a production and a test rule, and a BLUE_GREEN service of 2 tasks on
/// revision 1 with a rolling-back breaker.
async fn setup() -> Setup {
    let clock = Arc::new(FakeClock::new());
    let store: Arc<dyn Store> = Arc::new(SqliteStore::in_memory().unwrap());
    let c = Control::new(store, clock.clone());
    common::register_node(&c).await;
    common::default_cluster_with_web(&c).await;
    let elb = Elb::new(c.store.clone(), clock.clone());
    for _ in 0..3 {
        common::register_web_on_8080(&c, "bg").await;
    }
    let lb = common::load_balancer(&elb, "lb").await;
    let groups = [group(&elb, "a").await, group(&elb, "b").await];
    let both = json!([{"Type": "forward", "ForwardConfig": {"TargetGroups": [
        {"TargetGroupArn": groups[0], "Weight": 100}, {"TargetGroupArn": groups[1], "Weight": 0}]}}]);
    let mut rules = vec![];
    for port in [80, 8080] {
        let listener = elb
            .create_listener(
                &scope(),
                json!({"LoadBalancerArn": lb, "Protocol": "HTTP", "Port": port, "DefaultActions": [
                    {"Type": "fixed-response", "FixedResponseConfig": {"StatusCode": "404"}}]}),
            )
            .await
            .unwrap()["Listeners"][0]["ListenerArn"]
            .clone();
        let rule = elb
            .create_rule(
                &scope(),
                json!({"ListenerArn": listener, "Priority": 1, "Actions": both,
                       "Conditions": [{"Field": "path-pattern", "Values": ["/*"]}]}),
            )
            .await
            .unwrap()["Rules"][0]["RuleArn"]
            .as_str()
            .unwrap()
            .to_string();
        rules.push(rule);
    }
    let req: CreateServiceRequest = serde_json::from_value(json!({
        "cluster": "default", "serviceName": "bg", "taskDefinition": "bg:1", "desiredCount": 2,
        "networkConfiguration": common::network(),
        "deploymentConfiguration": {"strategy": "BLUE_GREEN", "bakeTimeInMinutes": 0,
            "deploymentCircuitBreaker": {"enable": true, "rollback": true,
                "thresholdConfiguration": {"type": "COUNT", "value": 3}}},
        "loadBalancers": [{"targetGroupArn": groups[0], "containerName": "app", "containerPort": 8080,
            "advancedConfiguration": {"alternateTargetGroupArn": groups[1], "productionListenerRule": rules[0],
                "testListenerRule": rules[1], "roleArn": "arn:aws:iam::123456789012:role/ecsInfrastructure"}}]
    }))
    .unwrap();
    c.create_service(&scope(), req).await.unwrap();
    Setup {
        c,
        elb,
        clock,
        groups,
        production_rule: rules[0].clone(),
    }
}

static NEXT_ADDRESS: AtomicUsize = AtomicUsize::new(10);

/// The node: wanted tasks run with an address of their own, tasks told to stop stop.
async fn node_pass(c: &Control) {
    for (key, _, _) in c.all_tasks().await.unwrap() {
        c.update_task(&key, |r| {
            if r.task.desired_status == "STOPPED" && r.task.last_status != "STOPPED" {
                r.task.last_status = "STOPPED".into();
                r.task.stopped_at = Some(1_800_000_000.0);
            } else if r.task.desired_status == "RUNNING" && r.task.last_status != "RUNNING" {
                r.task.last_status = "RUNNING".into();
                r.task.started_at = Some(1_800_000_000.0);
                let n = NEXT_ADDRESS.fetch_add(1, Ordering::SeqCst);
                r.task.containers[0].network_interfaces = vec![gantry_types::model::NetworkInterface {
                    attachment_id: format!("eni-{n}"),
                    private_ipv4_address: format!("10.0.{}.{}", n / 250, n % 250),
                }];
            } else {
                return false;
            }
            true
        })
        .await
        .unwrap();
    }
}

/// The health checker: targets of bg:2's tasks fail, one more each pass (real checks are
/// staggered: a broken release has tasks failing while others start), bg:3's are never
/// judged, the others pass.
async fn health_pass(s: &Setup) {
    let tasks = s.c.all_tasks().await.unwrap();
    let revision_at = |ip: &str| {
        tasks
            .iter()
            .find(|(_, r, _)| {
                let eni = r.task.containers[0].network_interfaces.first();
                eni.is_some_and(|n| n.private_ipv4_address == ip)
            })
            .map(|(_, r, _)| r.task.task_definition_arn.rsplit('/').next().unwrap_or("").to_string())
            .unwrap_or_default()
    };
    let mut failed_one = false;
    for (name, arn) in ["a", "b"].iter().zip(&s.groups) {
        let state = s.elb.group_state(&scope(), arn).await.unwrap();
        for t in &state.targets {
            let key = format!("{}:{}", t.id, t.port);
            let revision = revision_at(&t.id);
            let bad = revision == "bg:2";
            let judged = state.health.contains_key(&key);
            if revision == "bg:3" || (bad && !judged && std::mem::replace(&mut failed_one, true)) {
                continue;
            }
            let verdict = TargetState {
                state: if bad { "unhealthy" } else { "healthy" }.into(),
                reason: bad.then(|| "Target.ResponseCodeMismatch".into()),
                description: bad.then(|| "Health checks failed with these codes: [404]".into()),
            };
            s.elb.record_health(&scope(), name, &key, &verdict).await.unwrap();
        }
    }
}

/// The production rule's groups with a weight, each with its targets taking new requests.
async fn production(s: &Setup) -> Vec<(String, usize)> {
    let rules = s
        .elb
        .describe_rules(&scope(), json!({"RuleArns": [s.production_rule]}))
        .await
        .unwrap();
    let forward: Vec<Value> = rules["Rules"][0]["Actions"][0]["ForwardConfig"]["TargetGroups"]
        .as_array()
        .unwrap()
        .clone();
    let mut out = vec![];
    for g in forward.iter().filter(|g| g["Weight"].as_i64().unwrap() > 0) {
        let arn = g["TargetGroupArn"].as_str().unwrap().to_string();
        let state = s.elb.group_state(&scope(), &arn).await.unwrap();
        let serving = state.targets.iter().filter(|t| t.draining_until.is_none()).count();
        out.push((arn, serving));
    }
    out
}

async fn deploy(s: &Setup, revision: &str) {
    let req: UpdateServiceRequest = serde_json::from_value(json!({
        "cluster": "default", "service": "bg", "taskDefinition": revision, "forceNewDeployment": true}))
    .unwrap();
    s.c.update_service(&scope(), req).await.unwrap();
}

/// One node, health checker and controller pass, then the check: production forwards to at
/// least one group, and every group it forwards to has a target taking requests.
async fn pass_and_check(s: &Setup, what: &str, pass: usize) {
    node_pass(&s.c).await;
    health_pass(s).await;
    s.c.reconcile_services().await;
    let prod = production(s).await;
    assert!(
        !prod.is_empty() && prod.iter().all(|(_, n)| *n > 0),
        "{what}, pass {pass}: production forwards to no group, or to one with no target taking requests: {prod:?}"
    );
}

/// Passes a second apart until `done` says so.
async fn run_until(s: &Setup, what: &str, done: impl Fn(&gantry_types::model::Service) -> bool) {
    for pass in 0..120 {
        pass_and_check(s, what, pass).await;
        let (svc, _) =
            s.c.describe_services(&scope(), Some("default"), &["bg".to_string()], &[])
                .await
                .unwrap();
        if done(&svc[0]) {
            return;
        }
        s.clock.advance(1_000);
    }
    panic!("{what}: not done in 120 passes");
}

fn completed_on(svc: &gantry_types::model::Service, revision: &str) -> bool {
    svc.deployments.len() == 1
        && svc.deployments[0].rollout_state == "COMPLETED"
        && svc.deployments[0].task_definition.ends_with(revision)
}

/// Back on revision 1 after `n` rollbacks.
fn rolled_back(n: usize) -> impl Fn(&gantry_types::model::Service) -> bool {
    move |svc| {
        let rollbacks = svc
            .events
            .iter()
            .filter(|e| e.message.contains("rolling back to deployment"));
        rollbacks.count() == n && completed_on(svc, "bg:1")
    }
}

/// More passes, for whatever is still draining to go.
async fn settle(s: &Setup, what: &str) {
    for pass in 0..8 {
        s.clock.advance(1_000);
        pass_and_check(s, what, pass).await;
    }
}

#[tokio::test]
async fn production_always_has_targets_through_a_shift_and_rollbacks() {
    let s = setup().await;
    // The first deployment: production has nothing to forward to until its tasks run, so
    // these passes are not checked.
    for _ in 0..8 {
        node_pass(&s.c).await;
        health_pass(&s).await;
        s.c.reconcile_services().await;
        s.clock.advance(1_000);
    }
    run_until(&s, "first deployment", |svc| completed_on(svc, "bg:1")).await;
    assert_eq!(production(&s).await, vec![(s.groups[0].clone(), 2)]);

    // A healthy release moves production to the other group.
    deploy(&s, "bg:1").await;
    run_until(&s, "blue to green", |svc| completed_on(svc, "bg:1")).await;
    assert_eq!(production(&s).await, vec![(s.groups[1].clone(), 2)]);

    // A broken release fails in the first group; the breaker rolls back and production stays.
    deploy(&s, "bg:2").await;
    run_until(&s, "rollback", rolled_back(1)).await;
    settle(&s, "after the rollback").await;
    assert_eq!(production(&s).await, vec![(s.groups[1].clone(), 2)]);

    // StopServiceDeployment while green's tasks run, registered and still being checked:
    // traffic stays on blue while green's tasks drain and go.
    deploy(&s, "bg:3").await;
    for pass in 0..4 {
        pass_and_check(&s, "green behind the test rule", pass).await;
        s.clock.advance(1_000);
    }
    let green = s.elb.group_state(&scope(), &s.groups[0]).await.unwrap();
    assert_eq!(
        green.targets.len(),
        2,
        "green's tasks are registered in the other group"
    );
    let listed =
        s.c.list_service_deployments(&scope(), &json!({"cluster": "default", "service": "bg"}))
            .await
            .unwrap();
    let arn = listed["serviceDeployments"][0]["serviceDeploymentArn"]
        .as_str()
        .unwrap();
    s.c.stop_service_deployment(&scope(), arn, None).await.unwrap();
    run_until(&s, "stopped deployment", rolled_back(2)).await;
    settle(&s, "after the stopped deployment").await;
    assert_eq!(production(&s).await, vec![(s.groups[1].clone(), 2)]);
    let green = s.elb.group_state(&scope(), &s.groups[0]).await.unwrap();
    let serving = green.targets.iter().filter(|t| t.draining_until.is_none());
    assert_eq!(serving.count(), 0, "green's targets are deregistered");
}
