//! CloudWatch metrics: PutMetricData, GetMetricStatistics, GetMetricData (with basic metric
//! math) and ListMetrics over Gantry's metric store. Inputs arrive as the JSON protocol
//! carries them (timestamps in epoch seconds), already checked against the model's
//! constraints; what the model cannot say (exclusive members, value ranges, periods) is
//! checked here, in CloudWatch's words.

pub mod ecs;
pub mod insights;
pub mod math;
mod put;
mod query;
pub mod stats;
pub mod store;

pub use store::{MetricKey, MetricStore, MetricWrite, Published};

use crate::feed::{FeedCopy, Replica};
use crate::Clock;
use gantry_types::arn::Scope;
use serde::de::DeserializeOwned;
use serde_json::Value;
use std::sync::Arc;

/// An error in CloudWatch's terms: the model's error shape and a message.
#[derive(Debug, Clone, PartialEq)]
pub struct MetricsError {
    pub shape: &'static str,
    pub message: String,
}

impl MetricsError {
    pub fn invalid(m: impl Into<String>) -> MetricsError {
        MetricsError {
            shape: "InvalidParameterValueException",
            message: m.into(),
        }
    }
    pub fn missing(m: impl Into<String>) -> MetricsError {
        MetricsError {
            shape: "MissingRequiredParameterException",
            message: m.into(),
        }
    }
    pub fn combination(m: impl Into<String>) -> MetricsError {
        MetricsError {
            shape: "InvalidParameterCombinationException",
            message: m.into(),
        }
    }
    pub fn invalid_token(m: impl Into<String>) -> MetricsError {
        MetricsError {
            shape: "InvalidNextToken",
            message: m.into(),
        }
    }
    pub fn internal(m: impl Into<String>) -> MetricsError {
        MetricsError {
            shape: "InternalServiceFault",
            message: m.into(),
        }
    }
}

impl std::fmt::Display for MetricsError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.shape, self.message)
    }
}

impl std::error::Error for MetricsError {}

/// Parses a request into its typed form; members Gantry does not implement are refused by
/// name rather than ignored.
pub(crate) fn parse<T: DeserializeOwned>(v: Value) -> Result<T, MetricsError> {
    serde_json::from_value(v).map_err(|e| {
        let m = e.to_string();
        match m.strip_prefix("unknown field `").and_then(|r| r.split('`').next()) {
            Some(field) => MetricsError::invalid(format!("{field} is not supported by Gantry.")),
            None => MetricsError::invalid(m),
        }
    })
}

/// This server's copy of the metric data: written directly (one server) or through the
/// cluster's feed (`crate::feed`), like the logs.
pub type MetricData = Replica<MetricStore>;

impl FeedCopy for MetricStore {
    type Write = MetricWrite;
    type Error = MetricsError;
    const PREFIX: &'static str = "/metrics/";
    const WHAT: (&'static str, &'static str) = ("metrics", "metrics.db");

    fn apply(&self, w: &MetricWrite, revision: Option<i64>) -> Result<(), MetricsError> {
        MetricStore::apply(self, w, revision)
    }
    fn applied_revision(&self) -> Result<i64, MetricsError> {
        MetricStore::applied_revision(self)
    }
    fn set_applied_revision(&self, rev: i64) -> Result<(), MetricsError> {
        MetricStore::set_applied_revision(self, rev)
    }
    fn snapshot(&self, dest: &std::path::Path) -> Result<(), MetricsError> {
        MetricStore::snapshot(self, dest)
    }
    fn restore(&self, src: &std::path::Path) -> Result<(), MetricsError> {
        MetricStore::restore(self, src)
    }
    fn file(&self) -> Option<&std::path::Path> {
        MetricStore::file(self)
    }
    fn backend(message: String) -> MetricsError {
        MetricsError::internal(message)
    }
    fn is_backend(e: &MetricsError) -> bool {
        e.shape == "InternalServiceFault"
    }
    fn describe(e: &MetricsError) -> String {
        e.to_string()
    }
    fn split(w: &MetricWrite) -> Option<(MetricWrite, MetricWrite)> {
        if w.data.len() < 2 {
            return None;
        }
        let (a, b) = w.data.split_at(w.data.len() / 2);
        let half = |data: &[Published]| MetricWrite {
            data: data.to_vec(),
            ..w.clone()
        };
        Some((half(a), half(b)))
    }
}

/// Trims the metrics feed (the leader's housekeeping); see `feed::trim`.
pub async fn trim(store: &dyn gantry_store::Store, oldest_kept: i64) -> Result<usize, gantry_store::StoreError> {
    crate::feed::trim::<MetricStore>(store, oldest_kept).await
}

/// The CloudWatch metrics API over a server's copy of the data.
#[derive(Clone)]
pub struct Metrics {
    data: Arc<MetricData>,
    clock: Arc<dyn Clock>,
}

impl Metrics {
    pub fn new(data: Arc<MetricData>, clock: Arc<dyn Clock>) -> Metrics {
        Metrics { data, clock }
    }

    /// This server's copy of the metric data.
    pub fn data(&self) -> &MetricData {
        &self.data
    }

    fn now_ms(&self) -> i64 {
        self.clock.now_ms()
    }

    /// Publishes datapoints Gantry itself measured (the AWS/ namespaces), unchecked.
    pub async fn publish(&self, scope: &Scope, data: Vec<Published>) -> Result<(), MetricsError> {
        if data.is_empty() {
            return Ok(());
        }
        let w = MetricWrite {
            account: scope.account.clone(),
            region: scope.region.clone(),
            data,
        };
        self.data.write(w).await
    }

    /// Publishes the AWS/ECS utilisation the agents sampled of their tasks, and the Container
    /// Insights utilisation of those whose cluster has it `enabled`.
    pub async fn publish_usage(
        &self,
        usage: &[(crate::TaskRecord, ecs::TaskUsage)],
        enabled: &(dyn Fn(&crate::TaskRecord) -> bool + Sync),
    ) -> Result<(), MetricsError> {
        let mut by_scope: std::collections::BTreeMap<(String, String), Vec<Published>> = Default::default();
        let points = ecs::datapoints(usage)
            .into_iter()
            .chain(ecs::insights_datapoints(usage, enabled));
        for (scope, p) in points {
            by_scope.entry((scope.account, scope.region)).or_default().push(p);
        }
        for ((account, region), data) in by_scope {
            self.publish(&Scope { account, region }, data).await?;
        }
        Ok(())
    }

    pub async fn put_metric_data(&self, scope: &Scope, input: Value) -> Result<Value, MetricsError> {
        let data = put::datapoints(parse(input)?, self.now_ms())?;
        self.publish(scope, data).await?;
        Ok(Value::Object(Default::default()))
    }

    pub async fn get_metric_statistics(&self, scope: &Scope, input: Value) -> Result<Value, MetricsError> {
        query::statistics(self.data.read()?, scope, parse(input)?, self.now_ms())
    }

    pub async fn get_metric_data(&self, scope: &Scope, input: Value) -> Result<Value, MetricsError> {
        query::metric_data(self.data.read()?, scope, parse(input)?, self.now_ms())
    }

    /// Checks an alarm's queries; returns them and their period (seconds).
    pub fn check_alarm_queries(&self, scope: &Scope, queries: Value) -> Result<(Vec<Value>, i64), MetricsError> {
        query::check_alarm_queries(queries, scope)
    }

    /// The values of an alarm's series per period over [start, end).
    pub fn alarm_series(
        &self,
        scope: &Scope,
        queries: Vec<Value>,
        start_ms: i64,
        end_ms: i64,
    ) -> Result<math::Series, MetricsError> {
        query::alarm_series(self.data.read()?, scope, queries, start_ms, end_ms)
    }

    pub async fn list_metrics(&self, scope: &Scope, input: Value) -> Result<Value, MetricsError> {
        query::list(self.data.read()?, scope, parse(input)?, self.now_ms())
    }
}
