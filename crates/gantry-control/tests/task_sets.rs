//! Task sets (EXTERNAL deployment controller) over an in-memory store with a fake clock; the
//! test plays the agent. No root, no containers.

use gantry_control::services::CreateServiceRequest;
use gantry_control::task_sets::CreateTaskSetRequest;
use gantry_control::Control;
use gantry_store::{SqliteStore, Store};
use gantry_types::model::Scale;
use gantry_types::EcsError;
use serde_json::json;
use std::sync::Arc;

mod common;

use common::{scope, FakeClock};

async fn setup(desired: i64) -> Control {
    let store: Arc<dyn Store> = Arc::new(SqliteStore::in_memory().unwrap());
    let c = Control::new(store, Arc::new(FakeClock::new()));
    common::register_node(&c).await;
    common::default_cluster_with_web(&c).await;
    let req: CreateServiceRequest = serde_json::from_value(json!({
        "cluster": "default", "serviceName": "ext", "desiredCount": desired,
        "deploymentController": {"type": "EXTERNAL"}
    }))
    .unwrap();
    let svc = c.create_service(&scope(), req).await.unwrap();
    assert!(svc.deployments.is_empty(), "an EXTERNAL service has no deployments");
    c
}

fn task_set(percent: f64) -> CreateTaskSetRequest {
    serde_json::from_value(json!({
        "cluster": "default", "service": "ext", "taskDefinition": "web", "launchType": "FARGATE",
        "networkConfiguration": common::network(),
        "scale": {"value": percent, "unit": "PERCENT"}
    }))
    .unwrap()
}

/// The fake node: wanted tasks run, tasks told to stop stop.
async fn agent_pass(c: &Control) {
    for (key, _, _) in c.all_tasks().await.unwrap() {
        c.update_task(&key, |r| {
            if r.task.desired_status == "STOPPED" {
                r.task.last_status = "STOPPED".into();
                r.task.stopped_at = Some(1_800_000_000.0);
            } else {
                r.task.last_status = "RUNNING".into();
            }
            true
        })
        .await
        .unwrap();
    }
}

/// Running tasks per task set id.
async fn running(c: &Control) -> std::collections::BTreeMap<String, usize> {
    let mut out = std::collections::BTreeMap::new();
    for (_, t, _) in c.all_tasks().await.unwrap() {
        if t.task.last_status == "RUNNING" && t.task.desired_status == "RUNNING" {
            *out.entry(t.task.started_by.clone().unwrap_or_default()).or_default() += 1;
        }
    }
    out
}

async fn settle(c: &Control) {
    for _ in 0..4 {
        c.reconcile_services().await;
        agent_pass(c).await;
    }
    c.reconcile_services().await;
}

#[tokio::test]
async fn each_set_runs_its_share_and_a_deleted_set_drains_away() {
    let c = setup(4).await;
    let blue = c.create_task_set(&scope(), task_set(100.0)).await.unwrap();
    let green = c.create_task_set(&scope(), task_set(25.0)).await.unwrap();
    assert_eq!((blue.computed_desired_count, green.computed_desired_count), (4, 1));
    settle(&c).await;
    let counts = running(&c).await;
    assert_eq!((counts[&blue.id], counts[&green.id]), (4, 1));

    // 30% of 4 is 1.2: ECS rounds up.
    let s = Some("ext");
    let green = c
        .update_task_set(
            &scope(),
            Some("default"),
            s,
            &green.id,
            Scale {
                value: 30.0,
                unit: "PERCENT".into(),
            },
        )
        .await
        .unwrap();
    assert_eq!(green.computed_desired_count, 2);
    c.update_service_primary_task_set(&scope(), Some("default"), s, &green.task_set_arn)
        .await
        .unwrap();
    let refused = c.delete_task_set(&scope(), Some("default"), s, &green.id, false).await;
    assert!(
        matches!(refused, Err(EcsError::InvalidParameter(_))),
        "the primary goes only with force"
    );
    let gone = c
        .delete_task_set(&scope(), Some("default"), s, &blue.id, false)
        .await
        .unwrap();
    assert_eq!((gone.status.as_str(), gone.computed_desired_count), ("DRAINING", 0));
    settle(&c).await;
    let counts = running(&c).await;
    assert_eq!(counts.get(&blue.id), None);
    assert_eq!(counts[&green.id], 2);
    let (sets, _) = c
        .describe_task_sets(&scope(), Some("default"), s, None, false)
        .await
        .unwrap();
    let summary: Vec<(String, String, i64)> = sets
        .iter()
        .map(|t| (t.id.clone(), t.status.clone(), t.running_count))
        .collect();
    assert_eq!(summary, vec![(green.id.clone(), "PRIMARY".to_string(), 2)]);
    assert_eq!(sets[0].stability_status, "STEADY_STATE");
}

#[tokio::test]
async fn task_sets_only_for_external_services_and_bad_scales_refused() {
    let c = setup(2).await;
    let mut bad = task_set(100.0);
    bad.scale = Some(Scale {
        value: 150.0,
        unit: "PERCENT".into(),
    });
    assert!(matches!(
        c.create_task_set(&scope(), bad).await,
        Err(EcsError::InvalidParameter(_))
    ));
    let mut count = task_set(100.0);
    count.scale = Some(Scale {
        value: 1.0,
        unit: "COUNT".into(),
    });
    assert!(matches!(
        c.create_task_set(&scope(), count).await,
        Err(EcsError::InvalidParameter(_))
    ));
    let missing = c
        .update_task_set(
            &scope(),
            Some("default"),
            Some("ext"),
            "ecs-svc/1",
            Scale {
                value: 1.0,
                unit: "PERCENT".into(),
            },
        )
        .await;
    assert!(matches!(missing, Err(EcsError::TaskSetNotFound(_))));

    let plain: CreateServiceRequest = serde_json::from_value(json!({
        "cluster": "default", "serviceName": "plain", "taskDefinition": "web", "desiredCount": 0,
        "networkConfiguration": common::network()
    }))
    .unwrap();
    c.create_service(&scope(), plain).await.unwrap();
    let mut on_plain = task_set(100.0);
    on_plain.service = Some("plain".into());
    assert!(matches!(
        c.create_task_set(&scope(), on_plain).await,
        Err(EcsError::InvalidParameter(_))
    ));
}
