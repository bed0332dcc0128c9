//! Nodes in a cluster, without root: registration and epochs, Fargate and service tasks spread
//! over zones, a silent node declared lost (by the leader's own observation, on a fake clock)
//! with its tasks stopped as ECS words it and replaced on the other nodes, and fencing.

use gantry_control::nodes::{Liveness, NodeSpec, FENCED};
use gantry_control::services::CreateServiceRequest;
use gantry_control::Control;
use gantry_store::SqliteStore;
use serde_json::json;
use std::collections::BTreeMap;
use std::sync::Arc;

mod common;

use common::{scope, FakeClock};
use gantry_control::Clock;

fn spec(name: &str, zone: &str, pool: Option<&str>) -> NodeSpec {
    NodeSpec {
        name: name.into(),
        zone: Some(zone.into()),
        capacity_provider: pool.map(str::to_string),
        cpu: 2048,
        memory: 4096,
        address: None,
        subnet: Some("10.0.9.0/24".into()),
    }
}

async fn setup(nodes: &[(&str, &str)]) -> (Control, Arc<FakeClock>) {
    let clock = Arc::new(FakeClock::new());
    let c = Control::new(Arc::new(SqliteStore::in_memory().unwrap()), clock.clone());
    for (n, z) in nodes {
        c.register_node(spec(n, z, None)).await.unwrap();
    }
    common::default_cluster_with_web(&c).await;
    (c, clock)
}

async fn create_service(c: &Control, desired: i64) {
    let network = common::every_subnet(c).await;
    let req: CreateServiceRequest = serde_json::from_value(json!({
        "cluster": "default", "serviceName": "svc", "taskDefinition": "web", "desiredCount": desired,
        "launchType": "FARGATE",
        "networkConfiguration": network.clone()
    }))
    .unwrap();
    c.create_service(&scope(), req).await.unwrap();
}

/// Live (not stopped) tasks per node.
async fn per_node(c: &Control) -> BTreeMap<String, usize> {
    let mut m = BTreeMap::new();
    for (_, r, _) in c.all_tasks().await.unwrap() {
        if r.task.desired_status == "RUNNING" {
            *m.entry(r.node.clone()).or_default() += 1;
        }
    }
    m
}

/// Every live node runs what it is given (the test plays the agents).
async fn agents_pass(c: &Control, dead: &[&str]) {
    for (key, r, _) in c.all_tasks().await.unwrap() {
        if dead.contains(&r.node.as_str()) {
            continue;
        }
        c.update_task(&key, |r| {
            if r.task.last_status == "STOPPED" {
                return false;
            }
            r.task.last_status = if r.task.desired_status == "STOPPED" {
                "STOPPED"
            } else {
                "RUNNING"
            }
            .into();
            true
        })
        .await
        .unwrap();
    }
}

/// Fargate tasks of `family:web` in `cluster`, on the given subnets: the nodes they went to.
async fn run_web(c: &Control, cluster: &str, count: i64, network: serde_json::Value) -> Vec<String> {
    let req: gantry_control::RunTaskRequest = serde_json::from_value(json!({
        "cluster": cluster, "taskDefinition": "web", "count": count, "launchType": "FARGATE",
        "networkConfiguration": network
    }))
    .unwrap();
    let (tasks, failures) = c.run_task(&scope(), req).await.unwrap();
    assert!(failures.is_empty(), "{failures:?}");
    let arns: Vec<String> = tasks.iter().map(|t| t.task_arn.clone()).collect();
    let mut nodes: Vec<String> = c
        .all_tasks()
        .await
        .unwrap()
        .into_iter()
        .filter(|(_, r, _)| arns.contains(&r.task.task_arn))
        .map(|(_, r, _)| r.node)
        .collect();
    nodes.sort();
    nodes
}

#[tokio::test]
async fn a_groups_spread_counts_only_its_own_clusters_tasks() {
    let (c, _clock) = setup(&[("n1", "us-east-1a"), ("n2", "us-east-1b"), ("n3", "us-east-1c")]).await;
    c.create_cluster(&scope(), Some("other"), None, None).await.unwrap();
    // The same group in another cluster, all on n1 (its subnet only).
    let n1_only = json!({"awsvpcConfiguration": {"subnets": [gantry_control::ec2::subnet_id(&scope(), "n1")]}});
    assert_eq!(run_web(&c, "other", 3, n1_only).await, ["n1", "n1", "n1"]);
    // Counted, they would have kept this cluster's tasks off n1.
    let network = common::every_subnet(&c).await;
    assert_eq!(run_web(&c, "default", 3, network).await, ["n1", "n2", "n3"]);
}

#[tokio::test]
async fn a_service_spreads_over_zones_and_a_lost_nodes_tasks_are_replaced_elsewhere() {
    let (c, clock) = setup(&[("n1", "us-east-1a"), ("n2", "us-east-1b"), ("n3", "us-east-1c")]).await;
    create_service(&c, 6).await;
    c.reconcile_services().await;
    agents_pass(&c, &[]).await;
    let spread: Vec<usize> = per_node(&c).await.into_values().collect();
    assert_eq!(spread, [2, 2, 2], "spread over zones, then nodes");
    let t = &c.all_tasks().await.unwrap()[0].1;
    assert!(
        t.task.availability_zone.starts_with("us-east-1"),
        "{}",
        t.task.availability_zone
    );

    // n3 goes silent; n1 and n2 keep heartbeating. The leader judges by its own observation.
    let mut liveness = Liveness::default();
    assert!(c.sweep_lost_nodes(&mut liveness, 15_000).await.unwrap().is_empty());
    for _ in 0..6 {
        clock.advance(3_000);
        c.heartbeat("n1", 1).await.unwrap();
        c.heartbeat("n2", 1).await.unwrap();
        c.sweep_lost_nodes(&mut liveness, 15_000).await.unwrap();
    }
    assert!(!c.node("n3").await.unwrap().unwrap().live(), "silent for 18 s: lost");
    assert!(c.node("n1").await.unwrap().unwrap().live());
    let stopped: Vec<_> = c
        .all_tasks()
        .await
        .unwrap()
        .into_iter()
        .map(|(_, r, _)| r)
        .filter(|r| r.node == "n3")
        .collect();
    assert_eq!(stopped.len(), 2);
    for r in &stopped {
        assert_eq!(r.task.last_status, "STOPPED");
        assert_eq!(r.task.stop_code.as_deref(), Some("TerminationNotice"));
        assert_eq!(
            r.task.stopped_reason.as_deref(),
            Some("Host EC2 (instance n3) stopped/terminated")
        );
    }
    // The service replaces them on the live nodes.
    c.reconcile_services().await;
    agents_pass(&c, &["n3"]).await;
    let spread = per_node(&c).await;
    assert_eq!(spread.get("n3"), None);
    assert_eq!(spread.values().sum::<usize>(), 6);
    assert_eq!((spread["n1"], spread["n2"]), (3, 3));

    // A straggler (placed on n3 while it was being declared lost) is stopped by housekeeping.
    let (key, _, _) = c
        .all_tasks()
        .await
        .unwrap()
        .into_iter()
        .find(|(_, r, _)| r.node == "n1")
        .unwrap();
    c.update_task(&key, |r| {
        r.node = "n3".into();
        true
    })
    .await
    .unwrap();
    c.stop_tasks_on_lost_nodes().await.unwrap();
    let (_, r) = c
        .all_tasks()
        .await
        .unwrap()
        .into_iter()
        .map(|(k, r, _)| (k, r))
        .find(|(k, _)| *k == key)
        .unwrap();
    assert_eq!(
        (r.task.last_status.as_str(), r.task.stop_code.as_deref()),
        ("STOPPED", Some("TerminationNotice"))
    );

    // n3 comes back: its old epoch is fenced; registering again gives it a new one.
    assert!(c.heartbeat("n3", 1).await.unwrap_err().to_string().contains(FENCED));
    let again = c.register_node(spec("n3", "us-east-1c", None)).await.unwrap();
    assert_eq!((again.epoch, again.live()), (2, true));
    assert!(c.check_epoch("n3", 1).await.is_err());
    c.check_epoch("n3", 2).await.unwrap();
}

#[tokio::test]
async fn a_new_leader_gives_every_node_a_full_timeout() {
    let (c, clock) = setup(&[("n1", "us-east-1a")]).await;
    // Every server was down for a minute: the stored heartbeat is old, the node is not.
    clock.advance(60_000);
    let mut liveness = Liveness::default();
    assert!(c.sweep_lost_nodes(&mut liveness, 15_000).await.unwrap().is_empty());
    clock.advance(3_000);
    c.heartbeat("n1", 1).await.unwrap();
    // The sweep (every second) sees the heartbeat move.
    assert!(c.sweep_lost_nodes(&mut liveness, 15_000).await.unwrap().is_empty());
    clock.advance(14_000);
    assert!(c.sweep_lost_nodes(&mut liveness, 15_000).await.unwrap().is_empty());
    clock.advance(2_000);
    assert_eq!(c.sweep_lost_nodes(&mut liveness, 15_000).await.unwrap(), ["n1"]);
}

#[tokio::test]
async fn capacity_provider_pools_and_an_empty_pool() {
    let (c, _) = setup(&[]).await;
    c.register_node(spec("spot-1", "us-east-1a", Some("FARGATE_SPOT")))
        .await
        .unwrap();
    let network = common::every_subnet(&c).await;
    let run = |provider: &str| {
        serde_json::from_value::<gantry_control::RunTaskRequest>(json!({
            "cluster": "default", "taskDefinition": "web", "count": 2,
            "capacityProviderStrategy": [{"capacityProvider": provider, "weight": 1}],
            "networkConfiguration": network.clone()
        }))
        .unwrap()
    };
    let (tasks, failures) = c.run_task(&scope(), run("FARGATE_SPOT")).await.unwrap();
    assert_eq!((tasks.len(), failures.len()), (2, 0));
    assert!(c.all_tasks().await.unwrap().iter().all(|(_, r, _)| r.node == "spot-1"));
    // No node serves FARGATE: Fargate's capacity wording, per task.
    let (tasks, failures) = c.run_task(&scope(), run("FARGATE")).await.unwrap();
    assert_eq!((tasks.len(), failures.len()), (0, 2));
    assert!(failures[0]
        .reason
        .as_deref()
        .unwrap()
        .starts_with("Capacity is unavailable"));
}

#[tokio::test]
async fn node_names_are_validated() {
    let (c, _) = setup(&[]).await;
    for bad in ["", "-x", "a/b", "a b", &"x".repeat(64)] {
        assert!(c.register_node(spec(bad, "z", None)).await.is_err(), "{bad:?}");
    }
}

#[tokio::test]
async fn reclaiming_spot_capacity_interrupts_its_tasks_and_places_nothing_there_for_two_minutes() {
    let (c, clock) = setup(&[]).await;
    c.register_node(spec("plain", "us-east-1a", Some("FARGATE")))
        .await
        .unwrap();
    for n in ["spot-1", "spot-2"] {
        c.register_node(spec(n, "us-east-1b", Some("FARGATE_SPOT")))
            .await
            .unwrap();
    }
    let network = common::every_subnet(&c).await;
    let req: CreateServiceRequest = serde_json::from_value(json!({
        "cluster": "default", "serviceName": "svc", "taskDefinition": "web", "desiredCount": 4,
        "capacityProviderStrategy": [{"capacityProvider": "FARGATE_SPOT", "weight": 1}],
        "networkConfiguration": network.clone()
    }))
    .unwrap();
    c.create_service(&scope(), req).await.unwrap();
    c.reconcile_services().await;
    agents_pass(&c, &[]).await;
    assert_eq!(
        per_node(&c).await,
        BTreeMap::from([("spot-1".into(), 2), ("spot-2".into(), 2)])
    );

    // Only Spot capacity is reclaimed, and only a registered node.
    assert!(c
        .reclaim_node("plain")
        .await
        .unwrap_err()
        .to_string()
        .contains("FARGATE_SPOT"));
    assert!(c.reclaim_node("nope").await.is_err());
    let interrupted = c.reclaim_node("spot-1").await.unwrap();
    assert_eq!(interrupted.len(), 2);
    for (_, r, _) in c.all_tasks().await.unwrap() {
        if r.node == "spot-1" {
            assert_eq!(r.task.desired_status, "STOPPED");
            assert_eq!(r.task.stop_code.as_deref(), Some("SpotInterruption"));
            assert_eq!(
                r.task.stopped_reason.as_deref(),
                Some("Your Spot Task was interrupted.")
            );
        }
    }
    // The replacements go to the other Spot node, never the reclaimed one (its agent stops
    // the interrupted tasks meanwhile).
    for _ in 0..3 {
        c.reconcile_services().await;
        agents_pass(&c, &[]).await;
    }
    assert_eq!(per_node(&c).await, BTreeMap::from([("spot-2".into(), 4)]));
    // A restart of its agent does not end the warning; two minutes do.
    c.register_node(spec("spot-1", "us-east-1b", Some("FARGATE_SPOT")))
        .await
        .unwrap();
    let node = c.node("spot-1").await.unwrap().unwrap();
    assert!(!node.placeable(clock.now_ms()));
    clock.advance(120_000);
    assert!(node.placeable(clock.now_ms()));
}
