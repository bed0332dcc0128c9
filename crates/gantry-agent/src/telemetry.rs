//! The node's Prometheus metrics: how long task starts take by phase, and how tasks fail.

use gantry_prom::{Metric, SECONDS};

/// Task start time by phase: pull (images resolved), sandbox (namespace, address, port
/// bindings), containers (their shims report them started), start (containers started and
/// RUNNING recorded; includes containers), total.
pub static TASK_START: Metric = Metric::histogram(
    "gantry_task_start_seconds",
    "Time a task's start took on this node, by phase (pull, sandbox, containers, start, total).",
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

/// A random span id.
fn span_id() -> [u8; 8] {
    gantry_otlp::from_hex::<8>(&gantry_control::random_hex(8)).unwrap_or([1; 8])
}

/// Exports a task's start as a trace whose id is the task id: a "task start" span with the
/// pull, sandbox and start phases as children. `at` holds the epoch seconds the start began,
/// the images were pulled, the sandbox was ready and the task was RUNNING.
pub fn trace_start(rec: &gantry_control::TaskRecord, at: [f64; 4]) {
    if !gantry_otlp::enabled() {
        return;
    }
    let Some(trace_id) = gantry_otlp::from_hex::<16>(rec.id()) else {
        return;
    };
    use gantry_otlp::{secs_to_ns, Attr, Span, INTERNAL};
    let root = span_id();
    let attrs = vec![
        ("aws.ecs.task.arn".to_string(), Attr::Str(rec.task.task_arn.clone())),
        ("aws.ecs.cluster.arn".to_string(), Attr::Str(rec.cluster.clone())),
        (
            "aws.ecs.task.family".to_string(),
            Attr::Str(family(&rec.task.task_definition_arn)),
        ),
        ("gantry.node".to_string(), Attr::Str(rec.node.clone())),
    ];
    let span = |name: &str, id, parent, from: f64, to: f64, attributes| Span {
        trace_id,
        span_id: id,
        parent,
        name: name.to_string(),
        kind: INTERNAL,
        start_ns: secs_to_ns(from),
        end_ns: secs_to_ns(to),
        attributes,
        error: None,
    };
    gantry_otlp::record(span("task start", root, None, at[0], at[3], attrs));
    for (i, phase) in ["pull", "sandbox", "start"].iter().enumerate() {
        gantry_otlp::record(span(phase, span_id(), Some(root), at[i], at[i + 1], vec![]));
    }
}

fn family(task_definition_arn: &str) -> String {
    let name = task_definition_arn.rsplit('/').next().unwrap_or(task_definition_arn);
    name.split(':').next().unwrap_or(name).to_string()
}
