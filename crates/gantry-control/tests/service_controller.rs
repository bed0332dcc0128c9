//! The service controller over a real (in-memory SQLite) store with a fake clock and a fake
//! node: the test plays the agent by moving task records through the lifecycle.

use gantry_control::services::CreateServiceRequest;
use gantry_control::Control;
use gantry_store::{SqliteStore, Store};
use serde_json::json;
use std::sync::Arc;

mod common;

use common::{scope, FakeClock};

async fn setup(desired: i64) -> (Control, Arc<FakeClock>) {
    let clock = Arc::new(FakeClock::new());
    let store: Arc<dyn Store> = Arc::new(SqliteStore::in_memory().unwrap());
    let c = Control::new(store, clock.clone());
    c.register_node(gantry_control::nodes::NodeSpec {
        name: "node-1".into(),
        zone: None,
        capacity_provider: None,
        cpu: 4096,
        memory: 8192,
    })
    .await
    .unwrap();
    common::default_cluster_with_web(&c).await;
    let req: CreateServiceRequest = serde_json::from_value(json!({
        "cluster": "default", "serviceName": "svc", "taskDefinition": "web", "desiredCount": desired,
        "networkConfiguration": {"awsvpcConfiguration": {"subnets": ["subnet-1"]}}
    }))
    .unwrap();
    c.create_service(&scope(), req).await.unwrap();
    (c, clock)
}

/// The fake node: every task that is wanted runs, every task told to stop stops.
async fn agent_pass(c: &Control, stop_too: bool) {
    for (key, t, _) in c.all_tasks().await.unwrap() {
        c.update_task(&key, |r| {
            if r.task.desired_status == "STOPPED" {
                if !stop_too {
                    return false;
                }
                r.task.last_status = "STOPPED".into();
                r.task.stopped_at = Some(1_800_000_000.0);
            } else {
                r.task.last_status = "RUNNING".into();
                r.task.started_at = Some(1_800_000_000.0);
            }
            true
        })
        .await
        .unwrap();
        let _ = t;
    }
}

async fn service(c: &Control) -> gantry_types::model::Service {
    let (s, _) = c
        .describe_services(&scope(), Some("default"), &["svc".to_string()], &[])
        .await
        .unwrap();
    s.into_iter().next().unwrap()
}

#[tokio::test]
async fn a_steady_service_is_not_rewritten() {
    let (c, clock) = setup(2).await;
    for _ in 0..4 {
        c.reconcile_services().await;
        agent_pass(&c, true).await;
    }
    c.reconcile_services().await;
    assert_eq!(service(&c).await.running_count, 2);
    let rev = c.store.revision().await.unwrap();
    for _ in 0..20 {
        clock.advance(250);
        c.reconcile_services().await;
    }
    assert_eq!(
        c.store.revision().await.unwrap(),
        rev,
        "a steady service was written again"
    );
}

#[tokio::test]
async fn counts_match_list_tasks_and_exclude_stopping_tasks() {
    let (c, _) = setup(3).await;
    c.reconcile_services().await;
    agent_pass(&c, true).await;
    c.reconcile_services().await;
    // Scale in to 1: two tasks are told to stop but have not stopped yet.
    let req = serde_json::from_value(json!({"cluster": "default", "service": "svc", "desiredCount": 1})).unwrap();
    c.update_service(&scope(), req).await.unwrap();
    c.reconcile_services().await;
    c.reconcile_services().await;
    let s = service(&c).await;
    let (listed, _) = c
        .list_tasks(
            &scope(),
            gantry_control::ListTasks {
                service_name: Some("svc".into()),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(listed.len(), 1, "ListTasks shows only the task still wanted");
    assert_eq!(
        (s.running_count, s.pending_count),
        (1, 0),
        "stopping tasks are neither running nor pending"
    );
}
