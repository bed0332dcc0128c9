//! The AWS wire protocols: SigV4, AWS JSON 1.1, error shapes, and the per-service handlers.
//! The only crate that knows HTTP headers and AWS error names.

pub mod ecs;
pub mod logs;
pub mod server;
pub mod sigv4;

pub use server::{router, Api, ApiError};
