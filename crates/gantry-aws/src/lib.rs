//! The AWS wire protocols: SigV4, the model-driven JSON and Query codecs, error shapes, and the
//! per-service handlers. The only crate that knows HTTP headers and AWS error names.

pub mod acm;
pub mod api;
pub mod authz;
pub mod autoscaling;
pub mod cloudwatch;
pub mod console;
pub mod ec2;
pub mod ecs;
pub mod elbv2;
pub mod exec;
pub mod front;
pub mod iam;
pub mod logs;
pub mod prometheus;
pub mod protocol;
pub mod secretsmanager;
pub mod server;
pub mod servicediscovery;
pub mod sigv4;
pub mod ssm;

pub use api::{Api, ApiError};
pub use server::router;
