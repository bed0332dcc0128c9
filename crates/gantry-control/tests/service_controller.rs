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
    common::register_node(&c).await;
    common::default_cluster_with_web(&c).await;
    let req: CreateServiceRequest = serde_json::from_value(json!({
        "cluster": "default", "serviceName": "svc", "taskDefinition": "web", "desiredCount": desired,
        "networkConfiguration": common::network()
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

/// The fake node for tasks behind a load balancer: wanted tasks run with an address.
async fn agent_pass_with_addresses(c: &Control) {
    for (i, (key, _, _)) in c.all_tasks().await.unwrap().into_iter().enumerate() {
        c.update_task(&key, |r| {
            if r.task.desired_status == "STOPPED" {
                r.task.last_status = "STOPPED".into();
                r.task.stopped_at = Some(1_800_000_000.0);
            } else if r.task.last_status != "RUNNING" {
                r.task.last_status = "RUNNING".into();
                r.task.started_at = Some(1_800_000_000.0);
                r.task.containers[0].network_interfaces = vec![gantry_types::model::NetworkInterface {
                    attachment_id: format!("eni-{i}"),
                    private_ipv4_address: format!("10.0.0.{}", 10 + i),
                }];
            }
            true
        })
        .await
        .unwrap();
    }
}

#[tokio::test]
async fn a_service_behind_a_load_balancer_registers_waits_for_health_drains_and_replaces() {
    use gantry_control::elb::{Elb, TargetState};
    let (c, clock) = setup(0).await;
    let elb = Elb::new(c.store.clone(), clock.clone());
    common::register_web_on_8080(&c, "lbweb").await;
    let lb = common::load_balancer(&elb, "lb").await;
    let tg = common::target_group(&elb, "tg", 8080).await;
    let create = |lbs: serde_json::Value| {
        serde_json::from_value::<CreateServiceRequest>(json!({
            "cluster": "default", "serviceName": "websvc", "taskDefinition": "lbweb", "desiredCount": 2,
            "networkConfiguration": common::network(), "loadBalancers": lbs}))
        .unwrap()
    };
    let lbs = json!([{"targetGroupArn": tg, "containerName": "app", "containerPort": 8080}]);
    // A group no load balancer uses, and a port the container does not map, are refused.
    let e = c.create_service(&scope(), create(lbs.clone())).await.unwrap_err();
    assert!(
        e.to_string().contains("does not have an associated load balancer"),
        "{e}"
    );
    elb.create_listener(
        &scope(),
        json!({"LoadBalancerArn": lb, "Protocol": "HTTP", "Port": 80,
               "DefaultActions": [{"Type": "forward", "TargetGroupArn": tg}]}),
    )
    .await
    .unwrap();
    let wrong_port = json!([{"targetGroupArn": tg, "containerName": "app", "containerPort": 9999}]);
    let e = c.create_service(&scope(), create(wrong_port)).await.unwrap_err();
    assert_eq!(
        e.to_string(),
        "The container app did not have a container port 9999 defined."
    );
    elb.modify_target_group_attributes(
        &scope(),
        json!({"TargetGroupArn": tg, "Attributes": [{"Key": "deregistration_delay.timeout_seconds", "Value": "30"}]}),
    )
    .await
    .unwrap();
    c.create_service(&scope(), create(lbs)).await.unwrap();
    let svc = || async {
        let (s, _) = c
            .describe_services(&scope(), Some("default"), &["websvc".to_string()], &[])
            .await
            .unwrap();
        s.into_iter().next().unwrap()
    };
    c.reconcile_services().await;
    agent_pass_with_addresses(&c).await;
    c.reconcile_services().await;
    let state = elb.group_state(&scope(), &tg).await.unwrap();
    assert_eq!(state.targets.len(), 2, "running tasks are registered");
    c.reconcile_services().await;
    assert_eq!(
        svc().await.deployments[0].rollout_state,
        "IN_PROGRESS",
        "not complete before targets are healthy"
    );

    let healthy = TargetState {
        state: "healthy".into(),
        reason: None,
        description: None,
    };
    for t in &state.targets {
        elb.record_health(&scope(), "tg", &format!("{}:{}", t.id, t.port), &healthy)
            .await
            .unwrap();
    }
    c.reconcile_services().await;
    assert_eq!(svc().await.deployments[0].rollout_state, "COMPLETED");

    // One target fails its checks: the task is deregistered and replaced, and stopped only
    // after the deregistration delay.
    let sick = &state.targets[0];
    let unhealthy = TargetState {
        state: "unhealthy".into(),
        reason: Some("Target.ResponseCodeMismatch".into()),
        description: Some("Health checks failed with these codes: [500]".into()),
    };
    elb.record_health(&scope(), "tg", &format!("{}:{}", sick.id, sick.port), &unhealthy)
        .await
        .unwrap();
    c.reconcile_services().await;
    let events: Vec<String> = svc().await.events.iter().map(|e| e.message.clone()).collect();
    assert!(
        events
            .iter()
            .any(|m| m.contains("(port 8080) is unhealthy in (target-group") && m.contains("codes: [500]")),
        "{events:?}"
    );
    assert!(
        events
            .iter()
            .any(|m| m.contains("has begun draining connections on 1 tasks")),
        "{events:?}"
    );
    let sick_task = c
        .all_tasks()
        .await
        .unwrap()
        .into_iter()
        .map(|(_, t, _)| t)
        .find(|t| {
            t.task.containers[0]
                .network_interfaces
                .first()
                .map(|n| n.private_ipv4_address.as_str())
                == Some(sick.id.as_str())
        })
        .unwrap();
    assert_eq!(sick_task.task.desired_status, "RUNNING", "still draining");
    assert_eq!(
        elb.group_state(&scope(), &tg)
            .await
            .unwrap()
            .state_of(&sick.id, sick.port, 1_800_000_000.0)
            .state,
        "draining"
    );
    clock.advance(31_000);
    c.reconcile_services().await;
    let stopped = c
        .all_tasks()
        .await
        .unwrap()
        .into_iter()
        .map(|(_, t, _)| t)
        .find(|t| t.task.task_arn == sick_task.task.task_arn)
        .unwrap();
    assert_eq!(stopped.task.desired_status, "STOPPED");
    assert!(stopped
        .task
        .stopped_reason
        .as_deref()
        .unwrap()
        .starts_with("Task failed ELB health checks in (target-group arn:"));
    let live = c
        .all_tasks()
        .await
        .unwrap()
        .into_iter()
        .filter(|(_, t, _)| t.task.desired_status == "RUNNING")
        .count();
    assert_eq!(live, 2, "a replacement was started");
}

#[tokio::test]
async fn deployments_are_kept_as_history_with_ecs_statuses() {
    let (c, _) = setup(1).await;
    for _ in 0..3 {
        c.reconcile_services().await;
        agent_pass(&c, true).await;
    }
    let list = |c: &Control| {
        let c = c.clone();
        async move {
            c.list_service_deployments(&scope(), &json!({"cluster": "default", "service": "svc"}))
                .await
                .unwrap()["serviceDeployments"]
                .as_array()
                .unwrap()
                .iter()
                .map(|d| d["status"].as_str().unwrap().to_string())
                .collect::<Vec<_>>()
        }
    };
    c.reconcile_services().await;
    assert_eq!(list(&c).await, vec!["SUCCESSFUL"]);
    let req =
        serde_json::from_value(json!({"cluster": "default", "service": "svc", "forceNewDeployment": true})).unwrap();
    c.update_service(&scope(), req).await.unwrap();
    assert_eq!(
        list(&c).await,
        vec!["IN_PROGRESS", "SUCCESSFUL"],
        "listed as soon as UpdateService returns"
    );
    // A newer deployment supersedes the one in progress.
    let req =
        serde_json::from_value(json!({"cluster": "default", "service": "svc", "forceNewDeployment": true})).unwrap();
    c.update_service(&scope(), req).await.unwrap();
    for _ in 0..4 {
        c.reconcile_services().await;
        agent_pass(&c, true).await;
    }
    c.reconcile_services().await;
    assert_eq!(list(&c).await, vec!["SUCCESSFUL", "STOPPED", "SUCCESSFUL"]);
    let newest = c
        .list_service_deployments(&scope(), &json!({"cluster": "default", "service": "svc"}))
        .await
        .unwrap()["serviceDeployments"][0]["serviceDeploymentArn"]
        .clone();
    assert_eq!(service(&c).await.current_service_deployment.as_deref(), newest.as_str());
}

#[tokio::test]
async fn an_alarm_in_alarm_fails_the_deployment_and_rolls_back() {
    use gantry_control::alarms::Alarms;
    use gantry_control::metrics::{MetricData, MetricStore, Metrics};
    let (c, clock) = setup(2).await;
    for _ in 0..3 {
        c.reconcile_services().await;
        agent_pass(&c, true).await;
    }
    c.reconcile_services().await;
    let metrics = Metrics::new(
        Arc::new(MetricData::local(Arc::new(MetricStore::in_memory().unwrap()))),
        clock,
    );
    let alarms = Alarms::new(c.store.clone(), metrics, c.clock.clone());
    alarms
        .put_metric_alarm(
            &scope(),
            json!({"AlarmName": "errors", "Namespace": "App", "MetricName": "5xx",
            "Statistic": "Sum", "Period": 60, "EvaluationPeriods": 1, "Threshold": 1.0,
            "ComparisonOperator": "GreaterThanThreshold"}),
        )
        .await
        .unwrap();
    let config = json!({"alarms": {"alarmNames": ["errors"], "enable": true, "rollback": true}});
    let req = serde_json::from_value(
        json!({"cluster": "default", "service": "svc", "forceNewDeployment": true,
                                            "deploymentConfiguration": config}),
    )
    .unwrap();
    c.update_service(&scope(), req).await.unwrap();
    c.reconcile_services().await;
    agent_pass(&c, true).await;
    // While the alarm is quiet the deployment goes on.
    c.reconcile_services().await;
    assert_eq!(service(&c).await.deployments[0].rollout_state, "IN_PROGRESS");
    alarms
        .set_alarm_state(
            &scope(),
            json!({"AlarmName": "errors", "StateValue": "ALARM", "StateReason": "5xx up"}),
        )
        .await
        .unwrap();
    c.reconcile_services().await;
    let s = service(&c).await;
    let failed = s
        .deployments
        .iter()
        .find(|d| d.rollout_state == "FAILED")
        .expect("a failed deployment");
    let reason = failed.rollout_state_reason.as_deref().unwrap();
    assert!(reason.ends_with("failed: alarm(s) detected: errors."), "{reason}");
    assert_eq!(s.deployments[0].status, "PRIMARY");
    assert_eq!(
        s.deployments[0].rollout_state, "IN_PROGRESS",
        "rolling back in a new deployment"
    );
    assert!(s
        .events
        .iter()
        .any(|e| e.message.contains("deployment failed: alarm(s) detected: errors.")));
    // Enabling alarms without names is refused.
    let req = serde_json::from_value(json!({"cluster": "default", "service": "svc",
        "deploymentConfiguration": {"alarms": {"alarmNames": [], "enable": true, "rollback": false}}}))
    .unwrap();
    assert!(c.update_service(&scope(), req).await.is_err());
}

#[tokio::test]
async fn the_task_launch_rate_holds_back_run_task_and_services_until_it_refills() {
    use gantry_control::quotas::{Quotas, Rate, TokenBuckets};
    let (mut c, clock) = setup(0).await;
    c.quotas = Arc::new(Quotas {
        launches: TokenBuckets::new(Some(Rate {
            per_second: 1.0,
            burst: 3.0,
        })),
        services_per_cluster: 1,
        tasks_per_service: 10,
    });
    let run = |count: i64| {
        serde_json::from_value::<gantry_control::RunTaskRequest>(json!({
            "taskDefinition": "web", "count": count, "networkConfiguration": common::network()
        }))
        .unwrap()
    };
    let (started, _) = c.run_task(&scope(), run(3)).await.unwrap();
    assert_eq!(started.len(), 3);
    let e = c.run_task(&scope(), run(1)).await.unwrap_err();
    assert_eq!(
        (e.aws_type(), e.to_string().as_str()),
        ("ThrottlingException", "Rate exceeded")
    );

    // The service waits for the bucket, says so once, and launches once it refills.
    let up = |desired: i64| serde_json::from_value(json!({"service": "svc", "desiredCount": desired})).unwrap();
    c.update_service(&scope(), up(2)).await.unwrap();
    c.reconcile_services().await;
    c.reconcile_services().await;
    let s = service(&c).await;
    let waiting: Vec<_> = s
        .events
        .iter()
        .filter(|e| e.message.contains("task launch rate"))
        .collect();
    assert_eq!(waiting.len(), 1, "{:?}", s.events);
    assert_eq!(c.all_tasks().await.unwrap().len(), 3);
    clock.advance(2_000);
    c.reconcile_services().await;
    assert_eq!(c.all_tasks().await.unwrap().len(), 5);

    // Tasks per service and services per cluster.
    let e = c.update_service(&scope(), up(11)).await.unwrap_err();
    assert!(e.to_string().contains("the quota of tasks per service"), "{e}");
    let second: CreateServiceRequest = serde_json::from_value(json!({
        "serviceName": "svc2", "taskDefinition": "web", "desiredCount": 0, "networkConfiguration": common::network()
    }))
    .unwrap();
    let e = c.create_service(&scope(), second).await.unwrap_err();
    assert_eq!(e.aws_type(), "ClientException");
    assert!(e.to_string().contains("quota of services per cluster (1)"), "{e}");
}
