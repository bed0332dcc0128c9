//! Container instances, placement failures and account settings over an in-memory store (no
//! root, no agent: task records are what RunTask writes).

use gantry_control::{Control, RunTaskRequest};
use gantry_store::{SqliteStore, Store};
use serde_json::json;
use std::sync::Arc;

mod common;

use common::{scope, FakeClock};

async fn control() -> Control {
    let store: Arc<dyn Store> = Arc::new(SqliteStore::in_memory().unwrap());
    let c = Control::new(store, Arc::new(FakeClock::new()));
    c.register_node(gantry_control::nodes::NodeSpec {
        name: "node-1".into(),
        zone: None,
        capacity_provider: None,
        cpu: 2048,
        memory: 1024,
        address: None,
        subnet: None,
    })
    .await
    .unwrap();
    c.create_cluster(&scope(), Some("c1"), None, None).await.unwrap();
    c.register_task_definition(
        &scope(),
        json!({"family": "web", "containerDefinitions": [
            {"name": "a", "image": "busybox", "memory": 400, "cpu": 512,
             "portMappings": [{"containerPort": 80, "hostPort": 8080}]}]}),
    )
    .await
    .unwrap();
    c
}

fn run(td: &str) -> RunTaskRequest {
    serde_json::from_value(json!({"cluster": "c1", "taskDefinition": td})).unwrap()
}

#[tokio::test]
async fn ec2_tasks_take_room_on_the_node_and_fail_as_ecs_says_when_it_is_gone() {
    let c = control().await;
    let (tasks, failures) = c.run_task(&scope(), run("web")).await.unwrap();
    assert_eq!((tasks.len(), failures.len()), (1, 0));
    let ci = tasks[0].container_instance_arn.clone().expect("placed on the node");
    let (found, _) = c
        .describe_container_instances(&scope(), Some("c1"), std::slice::from_ref(&ci), &[])
        .await
        .unwrap();
    let remaining: Vec<(String, i64)> = found[0]
        .remaining_resources
        .iter()
        .map(|r| (r.name.clone(), r.integer_value))
        .collect();
    assert!(remaining.contains(&("CPU".into(), 2048 - 512)) && remaining.contains(&("MEMORY".into(), 1024 - 400)));
    // The same host port, then more memory than is left.
    let (tasks, failures) = c.run_task(&scope(), run("web")).await.unwrap();
    assert!(tasks.is_empty());
    assert_eq!(failures[0].reason.as_deref(), Some("RESOURCE:PORTS"));
    c.register_task_definition(
        &scope(),
        json!({"family": "big", "containerDefinitions": [{"name": "a", "image": "busybox", "memory": 700}]}),
    )
    .await
    .unwrap();
    let (_, failures) = c.run_task(&scope(), run("big")).await.unwrap();
    assert_eq!(failures[0].reason.as_deref(), Some("RESOURCE:MEMORY"));
    // Deregistering with a task on it needs force; forced, the task is told to stop.
    assert!(c
        .deregister_container_instance(&scope(), Some("c1"), &ci, false)
        .await
        .is_err());
    let d = c
        .deregister_container_instance(&scope(), Some("c1"), &ci, true)
        .await
        .unwrap();
    assert_eq!(d.status, "INACTIVE");
    let (t, _) = c
        .describe_tasks(&scope(), Some("c1"), &[tasks_arn(&c).await], &[])
        .await
        .unwrap();
    assert_eq!(t[0].desired_status, "STOPPED");
    let (_, failures) = c.run_task(&scope(), run("big")).await.unwrap();
    assert_eq!(
        failures[0].reason.as_deref(),
        Some("No Container Instances were found in your cluster.")
    );
}

async fn tasks_arn(c: &Control) -> String {
    let all = c.all_tasks().await.unwrap();
    all[0].1.task.task_arn.clone()
}

#[tokio::test]
async fn account_settings_resolve_principal_then_root_then_default() {
    let c = control().await;
    let root = gantry_control::account_settings::root_arn(&scope());
    let role = root.replace(":root", ":role/app");
    let eff = |p: String| {
        let c = c.clone();
        async move {
            c.effective_setting(&scope(), &p, "containerInsights")
                .await
                .unwrap()
                .value
        }
    };
    assert_eq!(eff(role.clone()).await, "disabled");
    c.put_account_setting(&scope(), "containerInsights", "enabled", None, true)
        .await
        .unwrap();
    assert_eq!(
        eff(role.clone()).await,
        "enabled",
        "the root user's setting is the account default"
    );
    c.put_account_setting(&scope(), "containerInsights", "enhanced", Some(&role), false)
        .await
        .unwrap();
    assert_eq!(
        (eff(role.clone()).await, eff(root.clone()).await),
        ("enhanced".into(), "enabled".into())
    );
    c.delete_account_setting(&scope(), "containerInsights", Some(&role))
        .await
        .unwrap();
    assert_eq!(eff(role).await, "enabled");
    assert!(c
        .put_account_setting(&scope(), "containerInsights", "maybe", None, false)
        .await
        .is_err());
    // Long ARN formats decide the ARNs issued.
    c.put_account_setting(&scope(), "taskLongArnFormat", "disabled", None, true)
        .await
        .unwrap();
    let (tasks, _) = c.run_task(&scope(), run("web")).await.unwrap();
    assert!(tasks[0]
        .task_arn
        .ends_with(&format!("task/{}", gantry_types::arn::task_id(&tasks[0].task_arn))));
    assert!(!tasks[0].task_arn.contains("/c1/"));
}

#[tokio::test]
async fn a_task_gets_its_definitions_ephemeral_storage_unless_overridden() {
    let c = control().await;
    c.register_task_definition(
        &scope(),
        json!({"family": "disk", "ephemeralStorage": {"sizeInGiB": 50},
               "containerDefinitions": [{"name": "a", "image": "busybox", "memory": 100}]}),
    )
    .await
    .unwrap();
    let size = |t: &gantry_types::model::Task| t.ephemeral_storage.as_ref().map(|e| e.size_in_gi_b);
    let (tasks, _) = c.run_task(&scope(), run("disk")).await.unwrap();
    assert_eq!(size(&tasks[0]), Some(50));
    let (tasks, _) = c.run_task(&scope(), run("web")).await.unwrap();
    assert_eq!(size(&tasks[0]), Some(20));
    let overridden: RunTaskRequest = serde_json::from_value(
        json!({"cluster": "c1", "taskDefinition": "disk", "overrides": {"ephemeralStorage": {"sizeInGiB": 30}}}),
    )
    .unwrap();
    let (tasks, _) = c.run_task(&scope(), overridden).await.unwrap();
    assert_eq!(size(&tasks[0]), Some(30));
}
