//! The node's Prometheus metrics: how long task starts take by phase, and how tasks fail.

use gantry_prom::{Metric, SECONDS};

/// Task start time by phase: pull (images resolved), sandbox (namespace, address, port
/// bindings), start (containers started and RUNNING recorded), total.
pub static TASK_START: Metric = Metric::histogram(
    "gantry_task_start_seconds",
    "Time a task's start took on this node, by phase (pull, sandbox, start, total).",
    &["phase"],
    SECONDS,
);

/// Tasks that failed to start, by ECS error kind (CannotPullContainerError, ...).
pub static TASK_START_FAILURES: Metric = Metric::counter(
    "gantry_task_start_failures_total",
    "Tasks that failed to start on this node, by error kind.",
    &["error"],
);

/// Image pulls that failed (a CannotPullContainerError start failure each).
pub static IMAGE_PULL_FAILURES: Metric = Metric::counter(
    "gantry_image_pull_failures_total",
    "Image pulls that failed on this node.",
    &[],
);

/// Tasks stopped because an essential container exited (what replaces a service's task).
pub static ESSENTIAL_EXITS: Metric = Metric::counter(
    "gantry_task_essential_exits_total",
    "Tasks on this node stopped because an essential container exited.",
    &[],
);

/// Records a start failure by the kind its reason names first.
pub fn start_failed(reason: &str) {
    let kind = reason.split(':').next().unwrap_or("Unknown").trim();
    TASK_START_FAILURES.inc(&[kind]);
    if kind == "CannotPullContainerError" {
        IMAGE_PULL_FAILURES.inc(&[]);
    }
}
