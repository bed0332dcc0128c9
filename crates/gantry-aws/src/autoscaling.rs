//! Application Auto Scaling (AWS JSON 1.1, target prefix AnyScaleFrontendService): scalable
//! targets, scaling policies and activities for ECS services, over
//! `gantry_control::autoscaling`. Inputs are checked against the model before they arrive.

use crate::api::{Api, ApiError};
use crate::protocol::Reply;
use gantry_control::alarms::Alarms;
use gantry_control::autoscaling::{AutoScaling, ScalingError};
use gantry_types::arn::Scope;
use serde_json::Value;

impl From<ScalingError> for ApiError {
    fn from(e: ScalingError) -> ApiError {
        ApiError::of_shape(e.shape, e.message)
    }
}

/// The registry's entry point.
pub fn handler<'a>(api: &'a Api, scope: &'a Scope, op: &'a str, input: Value) -> Reply<'a> {
    Box::pin(dispatch(api, scope, op, input))
}

async fn dispatch(api: &Api, scope: &Scope, op: &str, input: Value) -> Result<Value, ApiError> {
    let c = &api.control;
    let alarms = Alarms::new(c.store.clone(), api.metrics.clone(), c.clock.clone());
    let a = AutoScaling::new(c.clone(), alarms);
    let out = match op {
        "RegisterScalableTarget" => a.register_scalable_target(scope, input).await,
        "DescribeScalableTargets" => a.describe_scalable_targets(scope, input).await,
        "DeregisterScalableTarget" => a.deregister_scalable_target(scope, input).await,
        "PutScalingPolicy" => a.put_scaling_policy(scope, input).await,
        "DescribeScalingPolicies" => a.describe_scaling_policies(scope, input).await,
        "DeleteScalingPolicy" => a.delete_scaling_policy(scope, input).await,
        "DescribeScalingActivities" => a.describe_scaling_activities(scope, input).await,
        "PutScheduledAction" => a.put_scheduled_action(scope, input).await,
        "DescribeScheduledActions" => a.describe_scheduled_actions(scope, input).await,
        "DeleteScheduledAction" => a.delete_scheduled_action(scope, input).await,
        "TagResource" | "UntagResource" | "ListTagsForResource" => a.tags(scope, op, input).await,
        other => {
            return Err(ApiError::client(
                "UnknownOperationException",
                format!("Gantry does not implement the Application Auto Scaling operation {other} yet."),
            ))
        }
    };
    Ok(out?)
}
