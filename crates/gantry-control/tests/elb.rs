//! ELBv2's control plane over a real (in-memory SQLite) store and a fake clock: the rules
//! that tie load balancers, listeners, rules and target groups together, and target draining.

mod common;

use common::{scope, FakeClock};
use gantry_control::elb::Elb;
use gantry_store::{SqliteStore, Store};
use serde_json::{json, Value};
use std::sync::Arc;

fn setup() -> (Elb, Arc<FakeClock>) {
    let clock = Arc::new(FakeClock::new());
    let store: Arc<dyn Store> = Arc::new(SqliteStore::in_memory().unwrap());
    (Elb::new(store, clock.clone()), clock)
}

async fn listener(elb: &Elb, lb: &str, port: i64, tg: &str) -> Value {
    elb.create_listener(
        &scope(),
        json!({"LoadBalancerArn": lb, "Protocol": "HTTP", "Port": port,
               "DefaultActions": [{"Type": "forward", "TargetGroupArn": tg}]}),
    )
    .await
    .unwrap()["Listeners"][0]
        .clone()
}

#[tokio::test]
async fn a_load_balancer_is_placed_in_the_vpcs_subnets_and_groups_only() {
    let (elb, _) = setup();
    let (vpc, scope) = (common::vpc(), scope());
    let create = |input: serde_json::Value| elb.create_load_balancer(&scope, input, &vpc);
    let placed = create(json!({"Name": "ok", "Subnets": ["subnet-1"], "SecurityGroups": [vpc.groups[0]]}))
        .await
        .unwrap();
    let lb = &placed["LoadBalancers"][0];
    assert_eq!(lb["VpcId"], json!(vpc.id));
    assert_eq!(
        lb["AvailabilityZones"],
        json!([{"ZoneName": "us-east-1a", "SubnetId": "subnet-1"}])
    );
    let refused = |input| async { create(input).await.unwrap_err().shape };
    assert_eq!(refused(json!({"Name": "none"})).await, "ValidationError");
    assert_eq!(
        refused(json!({"Name": "gone", "Subnets": ["subnet-9"]})).await,
        "SubnetNotFoundException"
    );
    let twice = json!({"Name": "twice", "SubnetMappings": [{"SubnetId": "subnet-1"}], "Subnets": ["subnet-1"]});
    assert_eq!(refused(twice).await, "InvalidConfigurationRequestException");
    let bad_group = json!({"Name": "sg", "Subnets": ["subnet-1"], "SecurityGroups": ["sg-nope"]});
    assert_eq!(refused(bad_group).await, "InvalidSecurityGroupException");
    // A target group is in the one VPC, named or not.
    let tg = |vpc_id: Option<&str>| {
        let mut input = json!({"Name": "t", "Protocol": "HTTP", "Port": 80, "TargetType": "ip"});
        if let Some(v) = vpc_id {
            input["VpcId"] = json!(v);
        }
        elb.create_target_group(&scope, input)
    };
    assert_eq!(tg(None).await.unwrap()["TargetGroups"][0]["VpcId"], json!(vpc.id));
    assert_eq!(
        tg(Some("vpc-other")).await.unwrap_err().shape,
        "InvalidConfigurationRequestException"
    );
}

#[tokio::test]
async fn a_group_a_listener_forwards_to_names_its_load_balancer() {
    let (elb, _) = setup();
    let (l, g) = (
        common::load_balancer(&elb, "a").await,
        common::target_group(&elb, "g", 80).await,
    );
    listener(&elb, &l, 80, &g).await;
    let out = elb
        .describe_target_groups(&scope(), json!({"TargetGroupArns": [g]}))
        .await
        .unwrap();
    assert_eq!(out["TargetGroups"][0]["LoadBalancerArns"], json!([l]));
    let by_lb = elb
        .describe_target_groups(&scope(), json!({"LoadBalancerArn": l}))
        .await
        .unwrap();
    assert_eq!(by_lb["TargetGroups"].as_array().unwrap().len(), 1);
}

#[tokio::test]
async fn a_refused_listener_leaves_the_others_and_no_rules_behind() {
    let (elb, _) = setup();
    let (l, g) = (
        common::load_balancer(&elb, "a").await,
        common::target_group(&elb, "g", 80).await,
    );
    let first = listener(&elb, &l, 80, &g).await;
    let dup = elb
        .create_listener(
            &scope(),
            json!({"LoadBalancerArn": l, "Protocol": "HTTP", "Port": 80,
                   "DefaultActions": [{"Type": "fixed-response", "FixedResponseConfig": {"StatusCode": "404"}}]}),
        )
        .await
        .unwrap_err();
    assert_eq!(dup.shape, "DuplicateListenerException");
    let all = elb
        .describe_listeners(&scope(), json!({"LoadBalancerArn": l}))
        .await
        .unwrap();
    assert_eq!(all["Listeners"], json!([first]));
    let rules = elb
        .describe_rules(&scope(), json!({"ListenerArn": first["ListenerArn"]}))
        .await
        .unwrap();
    assert_eq!(
        rules["Rules"].as_array().unwrap().len(),
        1,
        "only the first listener's default rule"
    );
}

#[tokio::test]
async fn deregistered_targets_drain_for_the_delay_then_are_gone() {
    let (elb, clock) = setup();
    let (l, g) = (
        common::load_balancer(&elb, "a").await,
        common::target_group(&elb, "g", 80).await,
    );
    listener(&elb, &l, 80, &g).await;
    elb.register_targets(&scope(), json!({"TargetGroupArn": g, "Targets": [{"Id": "10.0.0.1"}]}))
        .await
        .unwrap();
    elb.modify_target_group_attributes(
        &scope(),
        json!({"TargetGroupArn": g, "Attributes": [{"Key": "deregistration_delay.timeout_seconds", "Value": "30"}]}),
    )
    .await
    .unwrap();
    elb.deregister_targets(&scope(), json!({"TargetGroupArn": g, "Targets": [{"Id": "10.0.0.1"}]}))
        .await
        .unwrap();
    let state = |v: Value| v["TargetHealthDescriptions"].clone();
    let h = state(
        elb.describe_target_health(&scope(), json!({"TargetGroupArn": g}))
            .await
            .unwrap(),
    );
    assert_eq!(h[0]["TargetHealth"]["State"], "draining");
    clock.advance(29_000);
    let h = state(
        elb.describe_target_health(&scope(), json!({"TargetGroupArn": g}))
            .await
            .unwrap(),
    );
    assert_eq!(h[0]["TargetHealth"]["State"], "draining");
    clock.advance(2_000);
    let h = state(
        elb.describe_target_health(&scope(), json!({"TargetGroupArn": g}))
            .await
            .unwrap(),
    );
    assert_eq!(h, json!([]));
    // Registering again while draining takes the target back.
    elb.register_targets(&scope(), json!({"TargetGroupArn": g, "Targets": [{"Id": "10.0.0.1"}]}))
        .await
        .unwrap();
    elb.deregister_targets(&scope(), json!({"TargetGroupArn": g, "Targets": [{"Id": "10.0.0.1"}]}))
        .await
        .unwrap();
    elb.register_targets(&scope(), json!({"TargetGroupArn": g, "Targets": [{"Id": "10.0.0.1"}]}))
        .await
        .unwrap();
    let h = state(
        elb.describe_target_health(&scope(), json!({"TargetGroupArn": g}))
            .await
            .unwrap(),
    );
    assert_eq!(h[0]["TargetHealth"]["State"], "initial");
}

#[tokio::test]
async fn rule_priorities_swap_atomically_and_clash_is_refused() {
    let (elb, _) = setup();
    let (l, g) = (
        common::load_balancer(&elb, "a").await,
        common::target_group(&elb, "g", 80).await,
    );
    let lis = listener(&elb, &l, 80, &g).await;
    let mut arns = vec![];
    for (p, path) in [(1, "/a"), (2, "/b")] {
        let r = elb
            .create_rule(
                &scope(),
                json!({"ListenerArn": lis["ListenerArn"], "Priority": p,
                       "Conditions": [{"Field": "path-pattern", "Values": [path]}],
                       "Actions": [{"Type": "forward", "TargetGroupArn": g}]}),
            )
            .await
            .unwrap();
        arns.push(r["Rules"][0]["RuleArn"].as_str().unwrap().to_string());
    }
    let clash = elb
        .set_rule_priorities(
            &scope(),
            json!({"RulePriorities": [{"RuleArn": arns[0], "Priority": 2}]}),
        )
        .await
        .unwrap_err();
    assert_eq!(clash.shape, "PriorityInUseException");
    elb.set_rule_priorities(
        &scope(),
        json!({"RulePriorities": [{"RuleArn": arns[0], "Priority": 2}, {"RuleArn": arns[1], "Priority": 1}]}),
    )
    .await
    .unwrap();
    let rules = elb
        .describe_rules(&scope(), json!({"ListenerArn": lis["ListenerArn"]}))
        .await
        .unwrap();
    let order: Vec<&str> = rules["Rules"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["RuleArn"].as_str().unwrap())
        .collect();
    assert_eq!(&order[..2], &[arns[1].as_str(), arns[0].as_str()]);
}

#[tokio::test]
async fn conditions_are_checked_and_normalised() {
    use gantry_control::elb::check_conditions;
    let c = |v: Value| check_conditions(serde_json::from_value(v).unwrap());
    let ok = c(json!([{"Field": "host-header", "HostHeaderConfig": {"Values": ["*.example.com"]}}])).unwrap();
    assert_eq!(ok[0].values, Some(vec!["*.example.com".to_string()]));
    assert!(c(json!([])).is_err());
    assert!(c(json!([{"Field": "colour", "Values": ["red"]}])).is_err());
    assert!(c(json!([{"Field": "source-ip", "SourceIpConfig": {"Values": ["10.0.0.0/33"]}}])).is_err());
    assert!(
        c(json!([{"Field": "path-pattern", "Values": ["/a"]}, {"Field": "path-pattern", "Values": ["/b"]}])).is_err()
    );
    let many = json!([{"Field": "http-header", "HttpHeaderConfig": {"HttpHeaderName": "X-A", "Values": ["1", "2", "3", "4", "5", "6"]}}]);
    assert_eq!(c(many).unwrap_err().shape, "TooManyConditionValuesException");
}

#[tokio::test]
async fn a_target_registered_again_at_a_reused_address_starts_without_a_verdict() {
    use gantry_control::elb::TargetState;
    let (elb, _) = setup();
    let (l, g) = (
        common::load_balancer(&elb, "a").await,
        common::target_group(&elb, "g", 80).await,
    );
    listener(&elb, &l, 80, &g).await;
    let reg = json!({"TargetGroupArn": g, "Targets": [{"Id": "10.0.0.1"}]});
    elb.register_targets(&scope(), reg.clone()).await.unwrap();
    let healthy = TargetState {
        state: "healthy".into(),
        reason: None,
        description: None,
    };
    elb.record_health(&scope(), "g", "10.0.0.1:80", &healthy).await.unwrap();
    elb.modify_target_group_attributes(
        &scope(),
        json!({"TargetGroupArn": g, "Attributes": [{"Key": "deregistration_delay.timeout_seconds", "Value": "0"}]}),
    )
    .await
    .unwrap();
    elb.deregister_targets(&scope(), reg.clone()).await.unwrap();
    elb.register_targets(&scope(), reg).await.unwrap();
    let h = elb
        .describe_target_health(&scope(), json!({"TargetGroupArn": g}))
        .await
        .unwrap();
    assert_eq!(h["TargetHealthDescriptions"][0]["TargetHealth"]["State"], "initial");
}
