//! The ECS domain model as Gantry stores and serves it: shapes named and spelled as botocore's
//! ECS model has them, ARNs, lifecycle, and the validation of task definitions against
//! Fargate's rules. serde only, no I/O.

pub mod arn;
pub mod cloudmap;
pub mod elbv2;
pub mod error;
pub mod fargate;
pub mod model;
pub mod taskdef;
pub mod volumes;

pub use error::EcsError;

/// Seconds since the epoch as ECS timestamps are sent (fractional).
pub fn epoch_seconds(ms: i64) -> f64 {
    ms as f64 / 1000.0
}
