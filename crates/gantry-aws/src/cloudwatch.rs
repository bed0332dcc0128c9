//! Amazon CloudWatch (monitoring): the metric operations Gantry serves, over
//! `gantry_control::metrics`. The model offers CBOR, JSON 1.0 and Query; botocore picks JSON
//! 1.0, older clients Query, and both arrive here as the same JSON values. Inputs are checked
//! against the model before they arrive.

use crate::api::{Api, ApiError};
use crate::protocol::Reply;
use gantry_control::metrics::MetricsError;
use gantry_types::arn::Scope;
use serde_json::Value;

impl From<MetricsError> for ApiError {
    fn from(e: MetricsError) -> ApiError {
        ApiError::of_shape(e.shape, e.message)
    }
}

/// The registry's entry point.
pub fn handler<'a>(api: &'a Api, scope: &'a Scope, op: &'a str, input: Value) -> Reply<'a> {
    Box::pin(dispatch(api, scope, op, input))
}

async fn dispatch(api: &Api, scope: &Scope, op: &str, input: Value) -> Result<Value, ApiError> {
    let m = &api.metrics;
    let alarms = gantry_control::alarms::Alarms::new(api.control.store.clone(), m.clone(), api.control.clock.clone());
    let out = match op {
        "PutMetricData" => m.put_metric_data(scope, input).await,
        "GetMetricStatistics" => m.get_metric_statistics(scope, input).await,
        "GetMetricData" => m.get_metric_data(scope, input).await,
        "ListMetrics" => m.list_metrics(scope, input).await,
        "PutMetricAlarm" => alarms.put_metric_alarm(scope, input).await,
        "DescribeAlarms" => alarms.describe_alarms(scope, input).await,
        "DescribeAlarmsForMetric" => alarms.describe_alarms_for_metric(scope, input).await,
        "DeleteAlarms" => alarms.delete_alarms(scope, input).await,
        "SetAlarmState" => alarms.set_alarm_state(scope, input).await,
        "EnableAlarmActions" => alarms.set_actions_enabled(scope, input, true).await,
        "DisableAlarmActions" => alarms.set_actions_enabled(scope, input, false).await,
        "DescribeAlarmHistory" => alarms.describe_alarm_history(scope, input).await,
        "TagResource" | "UntagResource" | "ListTagsForResource" => alarms.tags(scope, op, input).await,
        other => {
            return Err(ApiError::client(
                "InvalidAction",
                format!("Gantry does not implement the CloudWatch operation {other} yet."),
            ))
        }
    };
    Ok(out?)
}
