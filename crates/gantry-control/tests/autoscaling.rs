//! Application Auto Scaling over an in-memory store, metric store and fake clock: the test
//! publishes the service's CPU as the agents would and runs the leader's passes (alarms, then
//! scaling) itself. No root, no containers.

use gantry_control::alarms::Alarms;
use gantry_control::autoscaling::{run_once, AutoScaling};
use gantry_control::feed::Replica;
use gantry_control::metrics::{MetricStore, Metrics};
use gantry_control::services::CreateServiceRequest;
use gantry_control::{Clock, Control};
use gantry_store::{SqliteStore, Store};
use serde_json::{json, Value};
use std::sync::Arc;

mod common;

use common::{scope, FakeClock};

struct World {
    control: Control,
    metrics: Metrics,
    alarms: Alarms,
    scaling: AutoScaling,
    clock: Arc<FakeClock>,
}

const WEB: &str = "service/default/web";

async fn world(desired: i64) -> World {
    let store: Arc<dyn Store> = Arc::new(SqliteStore::in_memory().unwrap());
    let clock = Arc::new(FakeClock::new());
    let control = Control::new(store.clone(), clock.clone());
    common::register_node(&control).await;
    common::default_cluster_with_web(&control).await;
    let req: CreateServiceRequest = serde_json::from_value(json!({
        "cluster": "default", "serviceName": "web", "taskDefinition": "web", "desiredCount": desired,
        "launchType": "FARGATE", "networkConfiguration": common::network()
    }))
    .unwrap();
    control.create_service(&scope(), req).await.unwrap();
    let data = Arc::new(Replica::local(Arc::new(MetricStore::in_memory().unwrap())));
    let metrics = Metrics::new(data, clock.clone());
    let alarms = Alarms::new(store, metrics.clone(), clock.clone());
    let scaling = AutoScaling::new(control.clone(), alarms.clone());
    World {
        control,
        metrics,
        alarms,
        scaling,
        clock,
    }
}

impl World {
    async fn desired(&self) -> i64 {
        let out = self
            .control
            .describe_services(&scope(), Some("default"), &["web".to_string()], &[])
            .await
            .unwrap();
        out.0[0].desired_count
    }

    /// The service's CPU for the last 10 seconds, as its tasks' agents report it.
    async fn cpu(&self, value: f64) {
        let data = json!({"Namespace": "Load", "MetricData": [{
            "MetricName": "CPU", "Value": value, "StorageResolution": 1,
            "Timestamp": (self.clock.now_ms() - 1_000) as f64 / 1000.0,
            "Dimensions": [{"Name": "ServiceName", "Value": "web"}]}]});
        self.metrics.put_metric_data(&scope(), data).await.unwrap();
    }

    /// Ten seconds pass: data for them, then the leader's pass.
    async fn tick(&self, cpu: f64) -> i64 {
        self.clock.advance(10_000);
        self.cpu(cpu).await;
        self.clock.advance(2_500);
        self.alarms.evaluate_all().await.unwrap();
        run_once(&self.scaling).await.unwrap();
        self.clock.advance(-2_500);
        self.desired().await
    }

    async fn register(&self, min: i64, max: i64) {
        self.scaling
            .register_scalable_target(
                &scope(),
                json!({"ServiceNamespace": "ecs", "ResourceId": WEB,
                "ScalableDimension": "ecs:service:DesiredCount", "MinCapacity": min, "MaxCapacity": max}),
            )
            .await
            .unwrap();
    }

    async fn tracking(&self, target: f64, scale_in_cooldown: i64) -> Value {
        self.scaling
            .put_scaling_policy(
                &scope(),
                json!({
                "PolicyName": "cpu", "ServiceNamespace": "ecs", "ResourceId": WEB,
                "ScalableDimension": "ecs:service:DesiredCount", "PolicyType": "TargetTrackingScaling",
                "TargetTrackingScalingPolicyConfiguration": {
                    "TargetValue": target, "ScaleOutCooldown": 30, "ScaleInCooldown": scale_in_cooldown,
                    "CustomizedMetricSpecification": {"Namespace": "Load", "MetricName": "CPU", "Statistic": "Average",
                        "Dimensions": [{"Name": "ServiceName", "Value": "web"}]}}}),
            )
            .await
            .unwrap()
    }

    async fn causes(&self) -> Vec<String> {
        let out = self
            .scaling
            .describe_scaling_activities(&scope(), json!({"ServiceNamespace": "ecs", "ResourceId": WEB}))
            .await
            .unwrap();
        out["ScalingActivities"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| {
                format!(
                    "{} / {}",
                    a["Description"].as_str().unwrap(),
                    a["Cause"].as_str().unwrap()
                )
            })
            .collect()
    }
}

/// Load per task when `total` work is spread over `tasks` (each task can do 100).
fn per_task(total: f64, tasks: i64) -> f64 {
    (total / tasks as f64).min(100.0)
}

#[tokio::test]
async fn target_tracking_scales_out_at_once_settles_and_scales_in_gradually() {
    let w = world(1).await;
    w.register(1, 10).await;
    let out = w.tracking(50.0, 30).await;
    let alarms: Vec<&str> = out["Alarms"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["AlarmName"].as_str().unwrap())
        .collect();
    assert_eq!(alarms.len(), 2);
    assert!(
        alarms[0].starts_with("TargetTracking-service/default/web-AlarmHigh-"),
        "{alarms:?}"
    );
    assert!(alarms[1].contains("-AlarmLow-"));
    // Quiet at 30%: nothing moves.
    assert_eq!(w.tick(30.0).await, 1);
    // A step to 240 units of work: one task saturates; the first pass scales out to 2 (100/50).
    // No task runs in this test, so each further scale-out waits out the cooldown (with
    // agents it waits only for the tasks it asked for to run).
    let mut desired = 1;
    let mut history = vec![];
    for _ in 0..12 {
        desired = w.tick(per_task(240.0, desired)).await;
        history.push(desired);
    }
    assert_eq!(history[0], 2, "scaled out on the first period: {history:?}");
    // Steady at 240 over 5 tasks is 48% (just under the target): it settles and stays.
    assert_eq!(desired, 5, "{history:?}");
    let settled = &history[6..];
    assert!(
        settled.iter().all(|d| *d == 5),
        "no flapping under a steady load: {history:?}"
    );
    // The load drops to 60: scale-in after a minute below 45%, a step at a time, cooldowns apart.
    let mut history = vec![];
    for _ in 0..30 {
        desired = w.tick(per_task(60.0, desired)).await;
        history.push(desired);
    }
    assert_eq!(
        history[..5],
        [5, 5, 5, 5, 5],
        "scale-in waits for six low periods: {history:?}"
    );
    assert!(
        history.windows(2).all(|p| p[1] >= p[0] - 1),
        "one task at a time: {history:?}"
    );
    assert_eq!(desired, 2, "60 units need two tasks at 50%: {history:?}");
    let causes = w.causes().await;
    assert!(
        causes[0]
            .starts_with("Setting desired count to 2. / monitor alarm TargetTracking-service/default/web-AlarmLow-"),
        "{causes:?}"
    );
    assert!(
        causes.last().unwrap().ends_with("in state ALARM triggered policy cpu"),
        "{causes:?}"
    );
}

#[tokio::test]
async fn step_scaling_bounds_and_suspension() {
    let w = world(2).await;
    w.register(2, 6).await;
    let arn = w
        .scaling
        .put_scaling_policy(&scope(), json!({
            "PolicyName": "steps", "ServiceNamespace": "ecs", "ResourceId": WEB,
            "ScalableDimension": "ecs:service:DesiredCount", "PolicyType": "StepScaling",
            "StepScalingPolicyConfiguration": {"AdjustmentType": "ChangeInCapacity", "Cooldown": 30,
                "StepAdjustments": [{"MetricIntervalLowerBound": 0.0, "MetricIntervalUpperBound": 20.0, "ScalingAdjustment": 1},
                                    {"MetricIntervalLowerBound": 20.0, "ScalingAdjustment": 3}]}}))
        .await
        .unwrap()["PolicyARN"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(arn.starts_with("arn:aws:autoscaling:us-east-1:123456789012:scalingPolicy:"));
    assert!(arn.ends_with(":resource/ecs/service/default/web:policyName/steps"));
    w.alarms
        .put_metric_alarm(
            &scope(),
            json!({"AlarmName": "busy", "Namespace": "Load", "MetricName": "CPU",
            "Dimensions": [{"Name": "ServiceName", "Value": "web"}], "Statistic": "Average", "Period": 10,
            "EvaluationPeriods": 1, "Threshold": 70.0, "ComparisonOperator": "GreaterThanThreshold",
            "AlarmActions": [arn]}),
        )
        .await
        .unwrap();
    // 80: the first step (+1); within the cooldown nothing more; 95: the second (+3), capped at 6.
    assert_eq!(w.tick(80.0).await, 3);
    assert_eq!(w.tick(80.0).await, 3);
    assert_eq!(w.tick(95.0).await, 3);
    assert_eq!(w.tick(95.0).await, 6);
    // Suspended scale-out: the alarm stays, nothing moves.
    w.scaling
        .register_scalable_target(
            &scope(),
            json!({"ServiceNamespace": "ecs", "ResourceId": WEB,
            "ScalableDimension": "ecs:service:DesiredCount", "MaxCapacity": 10,
            "SuspendedState": {"DynamicScalingOutSuspended": true}}),
        )
        .await
        .unwrap();
    for _ in 0..5 {
        assert_eq!(w.tick(95.0).await, 6);
    }
    // A lower maximum brings the service down to it at once.
    w.scaling
        .register_scalable_target(
            &scope(),
            json!({"ServiceNamespace": "ecs", "ResourceId": WEB,
            "ScalableDimension": "ecs:service:DesiredCount", "MaxCapacity": 4}),
        )
        .await
        .unwrap();
    assert_eq!(w.tick(0.0).await, 4);
    assert!(w.causes().await[0].contains("outside the scalable target's bounds (minimum 2, maximum 4)"));
    // Deregistering removes the policy; the alarm's action then names nothing and is refused anew.
    w.scaling
        .deregister_scalable_target(
            &scope(),
            json!({"ServiceNamespace": "ecs", "ResourceId": WEB,
            "ScalableDimension": "ecs:service:DesiredCount"}),
        )
        .await
        .unwrap();
    let policies = w
        .scaling
        .describe_scaling_policies(&scope(), json!({"ServiceNamespace": "ecs"}))
        .await
        .unwrap();
    assert_eq!(policies["ScalingPolicies"], json!([]));
}

#[tokio::test]
async fn requests_are_checked_in_application_auto_scaling_terms() {
    let w = world(1).await;
    let bad_targets = [
        json!({"ServiceNamespace": "dynamodb", "ResourceId": "table/x", "ScalableDimension": "dynamodb:table:ReadCapacityUnits", "MinCapacity": 1, "MaxCapacity": 2}),
        json!({"ServiceNamespace": "ecs", "ResourceId": "service/default/nope", "ScalableDimension": "ecs:service:DesiredCount", "MinCapacity": 1, "MaxCapacity": 2}),
        json!({"ServiceNamespace": "ecs", "ResourceId": "cluster/default", "ScalableDimension": "ecs:service:DesiredCount", "MinCapacity": 1, "MaxCapacity": 2}),
        json!({"ServiceNamespace": "ecs", "ResourceId": WEB, "ScalableDimension": "ecs:service:DesiredCount", "MinCapacity": 3, "MaxCapacity": 2}),
        json!({"ServiceNamespace": "ecs", "ResourceId": WEB, "ScalableDimension": "ecs:service:DesiredCount"}),
    ];
    for t in bad_targets {
        let e = w
            .scaling
            .register_scalable_target(&scope(), t.clone())
            .await
            .unwrap_err();
        assert_eq!(e.shape, "ValidationException", "{t}: {}", e.message);
    }
    let policy = |extra: Value| {
        let mut p = json!({"PolicyName": "p", "ServiceNamespace": "ecs", "ResourceId": WEB,
                           "ScalableDimension": "ecs:service:DesiredCount"});
        p.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
        p
    };
    let e = w
        .scaling
        .put_scaling_policy(&scope(), policy(json!({"PolicyType": "StepScaling"})))
        .await
        .unwrap_err();
    assert_eq!(
        e.shape, "ObjectNotFoundException",
        "no scalable target yet: {}",
        e.message
    );
    w.register(1, 3).await;
    let bad_policies = [
        policy(json!({"PolicyType": "StepScaling"})),
        policy(json!({"PolicyType": "PredictiveScaling"})),
        policy(
            json!({"PolicyType": "StepScaling", "StepScalingPolicyConfiguration": {"AdjustmentType": "ChangeInCapacity",
            "StepAdjustments": [{"MetricIntervalLowerBound": 0.0, "MetricIntervalUpperBound": 10.0, "ScalingAdjustment": 1},
                                {"MetricIntervalLowerBound": 20.0, "ScalingAdjustment": 2}]}}),
        ),
        policy(
            json!({"PolicyType": "TargetTrackingScaling", "TargetTrackingScalingPolicyConfiguration": {"TargetValue": 50.0}}),
        ),
        policy(
            json!({"PolicyType": "TargetTrackingScaling", "TargetTrackingScalingPolicyConfiguration": {"TargetValue": 50.0,
            "PredefinedMetricSpecification": {"PredefinedMetricType": "ALBRequestCountPerTarget"}}}),
        ),
    ];
    for p in bad_policies {
        let e = w.scaling.put_scaling_policy(&scope(), p.clone()).await.unwrap_err();
        assert_eq!(e.shape, "ValidationException", "{p}: {}", e.message);
    }
    // An alarm may only act on a policy that exists.
    let e = w
        .alarms
        .put_metric_alarm(&scope(), json!({"AlarmName": "x", "Namespace": "Load", "MetricName": "CPU", "Statistic": "Average",
            "Period": 60, "EvaluationPeriods": 1, "Threshold": 1.0, "ComparisonOperator": "GreaterThanThreshold",
            "AlarmActions": ["arn:aws:autoscaling:us-east-1:123456789012:scalingPolicy:x:resource/ecs/service/default/web:policyName/none"]}))
        .await
        .unwrap_err();
    assert_eq!(e.shape, "InvalidParameterValueException");
    let e = w
        .scaling
        .delete_scaling_policy(&scope(), policy(json!({"PolicyName": "none"})))
        .await
        .unwrap_err();
    assert_eq!(e.shape, "ObjectNotFoundException");
}

#[tokio::test]
async fn scheduled_actions_move_the_bounds_at_their_time() {
    let w = world(1).await;
    w.register(1, 4).await;
    let at = |ms: i64| {
        chrono::DateTime::from_timestamp_millis(ms)
            .unwrap()
            .format("%Y-%m-%dT%H:%M:%S")
            .to_string()
    };
    let now = w.clock.now_ms();
    let put = |name: &str, schedule: String, min: i64, max: i64| {
        json!({"ServiceNamespace": "ecs", "ScheduledActionName": name, "ResourceId": WEB,
               "ScalableDimension": "ecs:service:DesiredCount", "Schedule": schedule,
               "ScalableTargetAction": {"MinCapacity": min, "MaxCapacity": max}})
    };
    w.scaling
        .put_scheduled_action(&scope(), put("morning", format!("at({})", at(now + 25_000)), 3, 5))
        .await
        .unwrap();
    w.scaling
        .put_scheduled_action(&scope(), put("past", format!("at({})", at(now - 60_000)), 1, 1))
        .await
        .unwrap();
    assert_eq!(w.tick(0.0).await, 1, "not yet");
    assert_eq!(w.tick(0.0).await, 1, "not yet");
    assert_eq!(
        w.tick(0.0).await,
        3,
        "at its time the minimum rises and the service follows"
    );
    for _ in 0..3 {
        assert_eq!(w.tick(0.0).await, 3, "an at() schedule fires once; a past one never");
    }
    let causes = w.causes().await;
    assert_eq!(causes.len(), 2, "{causes:?}");
    assert_eq!(
        causes[1],
        "Setting min capacity to 3 and max capacity to 5 / scheduled action name morning was triggered"
    );
    let listed = w
        .scaling
        .describe_scheduled_actions(&scope(), json!({"ServiceNamespace": "ecs", "ResourceId": WEB}))
        .await
        .unwrap();
    assert_eq!(listed["ScheduledActions"].as_array().unwrap().len(), 2);
    let e = w
        .scaling
        .put_scheduled_action(&scope(), put("bad", "cron(0 0 * * * *)".into(), 1, 2))
        .await
        .unwrap_err();
    assert_eq!(e.shape, "ValidationException");
    assert!(e.message.contains("day-of-month and day-of-week"), "{}", e.message);
    let mut tz = put("tz", "rate(1 hour)".into(), 1, 2);
    tz["Timezone"] = json!("Mars/Olympus");
    assert_eq!(
        w.scaling.put_scheduled_action(&scope(), tz).await.unwrap_err().shape,
        "ValidationException"
    );
}

#[tokio::test]
async fn request_count_per_target_is_tracked_per_minute() {
    use gantry_control::metrics::stats::Agg;
    use gantry_control::metrics::{MetricKey, Published};
    let w = world(1).await;
    w.register(1, 5).await;
    w.scaling
        .put_scaling_policy(
            &scope(),
            json!({
            "PolicyName": "rps", "ServiceNamespace": "ecs", "ResourceId": WEB,
            "ScalableDimension": "ecs:service:DesiredCount", "PolicyType": "TargetTrackingScaling",
            "TargetTrackingScalingPolicyConfiguration": {"TargetValue": 600.0, "ScaleOutCooldown": 0,
                "PredefinedMetricSpecification": {"PredefinedMetricType": "ALBRequestCountPerTarget",
                    "ResourceLabel": "app/web/abc/targetgroup/web-tg/def"}}}),
        )
        .await
        .unwrap();
    // 200 requests per target in 10 seconds: 1,200 a minute, twice the target.
    w.clock.advance(10_000);
    let per = Published {
        key: MetricKey {
            namespace: "AWS/ApplicationELB".into(),
            name: "RequestCountPerTarget".into(),
            dims: vec![("TargetGroup".into(), "targetgroup/web-tg/def".into())],
        },
        ts_ms: w.clock.now_ms() - 9_000,
        unit: "None".into(),
        resolution: 1,
        agg: Agg::set(1.0, 200.0, 200.0, 200.0),
    };
    w.metrics.publish(&scope(), vec![per]).await.unwrap();
    w.clock.advance(2_500);
    w.alarms.evaluate_all().await.unwrap();
    run_once(&w.scaling).await.unwrap();
    assert_eq!(w.desired().await, 2);
}

#[tokio::test]
async fn container_insights_counts_for_clusters_that_enable_it() {
    use gantry_types::model::ClusterSetting;
    let w = world(2).await;
    let settings = vec![ClusterSetting {
        name: "containerInsights".into(),
        value: "enabled".into(),
    }];
    w.control
        .create_cluster(&scope(), Some("insights"), None, Some(settings))
        .await
        .unwrap();
    let req: CreateServiceRequest = serde_json::from_value(json!({
        "cluster": "insights", "serviceName": "api", "taskDefinition": "web", "desiredCount": 3,
        "launchType": "FARGATE", "networkConfiguration": common::network()
    }))
    .unwrap();
    w.control.create_service(&scope(), req).await.unwrap();
    w.clock.advance(20_000);
    gantry_control::controllers::publish_insights(&w.control, &w.metrics)
        .await
        .unwrap();
    let now = w.clock.now_ms() as f64 / 1000.0;
    let stat = |name: &str, dims: Value| {
        let m = w.metrics.clone();
        let input = json!({"Namespace": "ECS/ContainerInsights", "MetricName": name, "Dimensions": dims,
                           "StartTime": now - 60.0, "EndTime": now + 60.0, "Period": 60, "Statistics": ["Maximum"]});
        async move {
            let out = m.get_metric_statistics(&scope(), input).await.unwrap();
            out["Datapoints"]
                .as_array()
                .unwrap()
                .iter()
                .map(|d| d["Maximum"].as_f64().unwrap())
                .collect::<Vec<_>>()
        }
    };
    let svc = json!([{"Name": "ClusterName", "Value": "insights"}, {"Name": "ServiceName", "Value": "api"}]);
    assert_eq!(stat("DesiredTaskCount", svc.clone()).await, [3.0]);
    assert_eq!(stat("DeploymentCount", svc).await, [1.0]);
    assert_eq!(
        stat("ServiceCount", json!([{"Name": "ClusterName", "Value": "insights"}])).await,
        [1.0]
    );
    // The default cluster did not enable it.
    let web = json!([{"Name": "ClusterName", "Value": "default"}, {"Name": "ServiceName", "Value": "web"}]);
    assert!(stat("DesiredTaskCount", web).await.is_empty());
}
