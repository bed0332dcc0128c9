//! The control plane's background work, run by exactly one process at a time (`gantry dev`,
//! or the elected leader among `gantry server`s): the service controller, the sweep that
//! declares silent nodes lost, expiry of long-stopped tasks, trimming the logs feed, and store
//! compaction.

use crate::alarms::Alarms;
use crate::autoscaling::AutoScaling;
use crate::metrics::Metrics;
use crate::Control;
use std::time::Duration;
use tokio::sync::watch;

#[derive(Debug, Clone, Copy)]
pub struct Settings {
    /// A node silent for this long is lost.
    pub node_timeout: Duration,
    /// With replicated logs (a cluster): how long the feed keeps entries for a server that is
    /// away (`logfeed`).
    pub log_feed_window: Option<Duration>,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            node_timeout: Duration::from_secs(15),
            log_feed_window: None,
        }
    }
}

/// Stopped tasks stay visible this long, as in ECS (an hour or more).
const KEEP_STOPPED_SECS: f64 = 3.0 * 3600.0;

/// How often Container Insights' counts are published.
const INSIGHTS_EVERY: Duration = Duration::from_secs(10);

/// Publishes ECS/ContainerInsights counts for the clusters that enabled it (their setting is
/// read once per pass for each cluster that has services or tasks).
pub async fn publish_insights(control: &Control, metrics: &Metrics) -> Result<(), String> {
    let services: Vec<_> = control.all_services().await.map_err(|e| e.to_string())?;
    let tasks: Vec<_> = control.all_tasks().await.map_err(|e| e.to_string())?;
    let mut candidates = std::collections::BTreeSet::new();
    for (_, s, _) in &services {
        candidates.insert((s.account.clone(), s.region.clone(), s.cluster.clone()));
    }
    for (_, t, _) in &tasks {
        candidates.insert((t.account.clone(), t.region.clone(), t.cluster.clone()));
    }
    let mut enabled = std::collections::BTreeSet::new();
    for (account, region, cluster) in candidates {
        let scope = gantry_types::arn::Scope { account, region };
        if let Some(name) = control.container_insights_on(&scope, &cluster).await {
            enabled.insert((scope.account, scope.region, name));
        }
    }
    if enabled.is_empty() {
        return Ok(());
    }
    let services: Vec<_> = services.into_iter().map(|(_, s, _)| s).collect();
    let tasks: Vec<_> = tasks.into_iter().map(|(_, t, _)| t).collect();
    let now = control.clock.now_ms();
    let ts = (now - INSIGHTS_EVERY.as_millis() as i64).div_euclid(1000) * 1000;
    let mut by_scope: std::collections::BTreeMap<(String, String), Vec<crate::metrics::Published>> = Default::default();
    for (scope, p) in crate::metrics::insights::datapoints(&enabled, &services, &tasks, ts) {
        by_scope.entry((scope.account, scope.region)).or_default().push(p);
    }
    for ((account, region), data) in by_scope {
        let scope = gantry_types::arn::Scope { account, region };
        metrics.publish(&scope, data).await.map_err(|e| e.to_string())?;
    }
    Ok(())
}

impl Control {
    /// The cluster's name when its containerInsights setting is enabled or enhanced.
    pub async fn container_insights_on(&self, scope: &gantry_types::arn::Scope, cluster: &str) -> Option<String> {
        let c = self.active_cluster(scope, Some(cluster)).await.ok()?;
        let on = c
            .settings
            .iter()
            .flatten()
            .any(|s| s.name == "containerInsights" && (s.value == "enabled" || s.value == "enhanced"));
        on.then_some(c.cluster_name)
    }
}

/// How often CloudWatch alarms are evaluated (and scaling policies act on them): a period's
/// verdict is known within a second of its end.
const ALARM_EVERY: Duration = Duration::from_secs(1);

/// Runs every controller until `stop` flips (or its sender goes).
pub async fn run(control: Control, metrics: Metrics, settings: Settings, mut stop: watch::Receiver<bool>) {
    let alarms = Alarms::new(control.store.clone(), metrics.clone(), control.clock.clone());
    let scaling = AutoScaling::new(control.clone(), alarms.clone());
    let mut insights = tokio::time::interval(INSIGHTS_EVERY);
    insights.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut alarm_ticks = tokio::time::interval(ALARM_EVERY);
    alarm_ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut services = tokio::time::interval(Duration::from_millis(250));
    let mut nodes = tokio::time::interval(Duration::from_secs(1));
    let mut housekeeping = tokio::time::interval(Duration::from_secs(30));
    for t in [&mut services, &mut nodes, &mut housekeeping] {
        t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    }
    let mut liveness = crate::nodes::Liveness::default();
    let mut feed = tokio::time::interval(Duration::from_secs(5));
    feed.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut window = RevisionWindow::default();
    loop {
        tokio::select! {
            _ = services.tick() => control.reconcile_services().await,
            _ = nodes.tick() => {
                if let Err(e) = control.sweep_lost_nodes(&mut liveness, settings.node_timeout.as_millis() as i64).await {
                    tracing::warn!(error = %e, "sweeping lost nodes");
                }
            }
            _ = housekeeping.tick() => housekeep(&control).await,
            _ = insights.tick() => {
                if let Err(e) = publish_insights(&control, &metrics).await {
                    tracing::warn!(error = %e, "publishing Container Insights");
                }
                // Each whole minute is metered once, within 10 s of its end.
                if let Err(e) = crate::cost::meter(&control, &metrics).await {
                    tracing::warn!(error = %e, "metering cost");
                }
            }
            _ = alarm_ticks.tick() => {
                if let Err(e) = alarms.evaluate_all().await {
                    tracing::warn!(error = %e, "evaluating alarms");
                }
                // Policies act on the alarms just evaluated.
                if let Err(e) = crate::autoscaling::run_once(&scaling).await {
                    tracing::warn!(error = %e, "scaling");
                }
            }
            _ = feed.tick(), if settings.log_feed_window.is_some() => {
                let span = settings.log_feed_window.unwrap_or_default();
                if let Err(e) = trim_log_feed(&control, &mut window, span).await {
                    tracing::warn!(error = %e, "trimming the logs feed");
                }
            }
            r = stop.changed() => if r.is_err() || *stop.borrow() { return },
        }
    }
}

async fn housekeep(control: &Control) {
    let live = match control.all_tasks().await {
        Ok(tasks) => {
            let _ = control.expire_stopped_tasks(&tasks, KEEP_STOPPED_SECS).await;
            let live = tasks.iter().filter(|(_, r, _)| r.task.last_status != "STOPPED");
            Some(live.map(|(_, r, _)| r.task.task_arn.clone()).collect())
        }
        Err(e) => {
            tracing::warn!(error = %e, "listing tasks to expire");
            None
        }
    };
    let purged = crate::iam::purge_expired_keys(control.store.clone(), control.clock.now_ms(), live.as_ref()).await;
    if let Err(e) = purged {
        tracing::warn!(error = %e, "removing expired temporary keys");
    }
    if let Err(e) = control.purge_exec_sessions().await {
        tracing::warn!(error = %e, "removing finished exec sessions");
    }
    if let Err(e) = crate::secrets::purge_deleted(control.store.clone(), control.clock.now_ms()).await {
        tracing::warn!(error = %e, "removing secrets past their recovery window");
    }
    if let Err(e) = control.stop_tasks_on_lost_nodes().await {
        tracing::warn!(error = %e, "stopping tasks left on lost nodes");
    }
    // The store's history is bounded: compact all but the newest revisions.
    if let Err(e) = gantry_store::compact_history(control.store.as_ref(), gantry_store::HISTORY_KEPT).await {
        tracing::warn!(error = %e, "compacting the state store");
    }
}

/// Store revisions sampled over time, to tell which revision is older than a span (revisions
/// have no time of their own).
#[derive(Default)]
struct RevisionWindow {
    samples: std::collections::VecDeque<(std::time::Instant, i64)>,
}

impl RevisionWindow {
    /// Records `rev` now; returns the newest revision sampled at least `span` ago (0: none).
    fn older_than(&mut self, rev: i64, span: Duration) -> i64 {
        let now = std::time::Instant::now();
        self.samples.push_back((now, rev));
        let old_enough = |at: std::time::Instant| now.duration_since(at) >= span;
        while self.samples.len() >= 2 && old_enough(self.samples[1].0) {
            self.samples.pop_front();
        }
        match self.samples.front() {
            Some(&(at, r)) if old_enough(at) => r,
            _ => 0,
        }
    }
}

async fn trim_log_feed(
    control: &Control,
    window: &mut RevisionWindow,
    span: Duration,
) -> Result<(), gantry_store::StoreError> {
    let rev = control.store.revision().await?;
    let oldest_kept = window.older_than(rev, span);
    let n = crate::logfeed::trim(control.store.as_ref(), oldest_kept).await?;
    let m = crate::metrics::trim(control.store.as_ref(), oldest_kept).await?;
    if n + m > 0 {
        tracing::debug!(logs = n, metrics = m, "trimmed the feeds");
    }
    Ok(())
}
