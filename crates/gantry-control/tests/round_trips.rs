//! How many store round trips one after another an API call waits for: on etcd each is a
//! network round trip (and a write an fsync), so calls read what they can at once. Measured on
//! tokio's paused clock over a store whose every operation takes ROUND_TRIP of it: the virtual
//! time a call took, divided by ROUND_TRIP, is the length of its longest chain of store calls.

use gantry_control::Control;
use gantry_store::instrumented::Instrumented;
use serde_json::json;
use std::sync::Arc;
use std::time::Duration;

mod common;

use common::{scope, FakeClock};

const ROUND_TRIP: Duration = Duration::from_millis(10);

/// Round trips, one after another, that `call` waited for.
async fn round_trips<T>(call: impl std::future::Future<Output = T>) -> (u128, T) {
    let began = tokio::time::Instant::now();
    let out = call.await;
    (began.elapsed().as_millis() / ROUND_TRIP.as_millis(), out)
}

/// Three nodes in three zones, the default cluster and the `web` Fargate definition.
async fn three_nodes() -> Control {
    let c = Control::new(
        Arc::new(Instrumented::new().with_round_trip(ROUND_TRIP)),
        Arc::new(FakeClock::new()),
    );
    for (n, z) in [("n1", "us-east-1a"), ("n2", "us-east-1b"), ("n3", "us-east-1c")] {
        c.register_node(gantry_control::nodes::NodeSpec {
            name: n.into(),
            zone: Some(z.into()),
            capacity_provider: None,
            cpu: 2048,
            memory: 4096,
            address: None,
            subnet: Some("10.0.9.0/24".into()),
        })
        .await
        .unwrap();
    }
    common::default_cluster_with_web(&c).await;
    c
}

async fn run_web(c: &Control, count: i64, network: &serde_json::Value) -> Vec<String> {
    run_web_as(c, count, network, None).await
}

/// RunTask of `web`, with a clientToken if given (boto3 and the AWS CLI send one each time).
async fn run_web_as(c: &Control, count: i64, network: &serde_json::Value, token: Option<&str>) -> Vec<String> {
    let req: gantry_control::RunTaskRequest = serde_json::from_value(json!({
        "taskDefinition": "web", "count": count, "launchType": "FARGATE", "networkConfiguration": network,
        "clientToken": token
    }))
    .unwrap();
    let (tasks, failures) = c.run_task(&scope(), req).await.unwrap();
    assert!(failures.is_empty(), "{failures:?}");
    tasks.into_iter().map(|t| t.task_arn).collect()
}

#[tokio::test(start_paused = true)]
async fn run_task_reads_at_once() {
    let c = three_nodes().await;
    let network = common::every_subnet(&c).await;
    run_web(&c, 1, &network).await; // the VPC's default group exists from here on
                                    // Reads of the cluster, definition, nodes and settings; of the security groups and the
                                    // group's tasks (spread); the new tasks' records.
    let (trips, arns) = round_trips(run_web(&c, 10, &network)).await;
    assert_eq!(arns.len(), 10);
    assert!(
        trips <= 3,
        "RunTask of 10 waited for {trips} round trips one after another"
    );
}

#[tokio::test(start_paused = true)]
async fn run_task_reads_and_writes_its_client_token_with_the_rest() {
    let c = three_nodes().await;
    let network = common::every_subnet(&c).await;
    run_web(&c, 1, &network).await;
    // The token's earlier tasks and the security groups are read with the cluster, definition,
    // nodes and settings; then the group's tasks (spread over three nodes); then the tasks'
    // records are written with the token's (five round trips when each of those waited).
    let (trips, arns) = round_trips(run_web_as(&c, 1, &network, Some("retry-1"))).await;
    assert_eq!(arns.len(), 1);
    assert!(trips <= 3, "RunTask waited for {trips} round trips one after another");
    // A retry with the token answers with the same task, starting nothing.
    assert_eq!(run_web_as(&c, 1, &network, Some("retry-1")).await, arns);
}

#[tokio::test(start_paused = true)]
async fn describe_tasks_reads_its_tasks_at_once() {
    let c = three_nodes().await;
    let arns = run_web(&c, 10, &common::every_subnet(&c).await).await;
    let (trips, described) = round_trips(c.describe_tasks(&scope(), None, &arns, &[])).await;
    let (tasks, failures) = described.unwrap();
    assert_eq!((tasks.len(), failures.len()), (10, 0));
    assert!(
        trips <= 2,
        "DescribeTasks of 10 waited for {trips} round trips one after another"
    );
}
