//! What the control plane's tests share: a clock the test moves, and the scope they act in.
#![allow(dead_code)] // each test binary uses a part

use gantry_control::Clock;
use gantry_types::arn::Scope;
use std::sync::atomic::{AtomicI64, Ordering};

/// Starts at 2027-01-15 and moves only when the test says so.
pub struct FakeClock(pub AtomicI64);

impl FakeClock {
    pub fn new() -> FakeClock {
        FakeClock(AtomicI64::new(1_800_000_000_000))
    }

    pub fn advance(&self, ms: i64) {
        self.0.fetch_add(ms, Ordering::SeqCst);
    }
}

impl Clock for FakeClock {
    fn now_ms(&self) -> i64 {
        self.0.load(Ordering::SeqCst)
    }
}

pub fn scope() -> Scope {
    Scope {
        account: "123456789012".into(),
        region: "us-east-1".into(),
    }
}

/// The default cluster and the `web` Fargate task definition (256 CPU, 512 MiB) the tests run.
pub async fn default_cluster_with_web(c: &gantry_control::Control) {
    c.create_cluster(&scope(), Some("default"), None, None).await.unwrap();
    c.register_task_definition(
        &scope(),
        serde_json::json!({"family": "web", "networkMode": "awsvpc", "requiresCompatibilities": ["FARGATE"],
               "cpu": "256", "memory": "512", "containerDefinitions": [{"name": "app", "image": "busybox"}]}),
    )
    .await
    .unwrap();
}
