//! What every service's handlers share: the state they act on and the error they answer with.

use crate::sigv4::AuthError;
use axum::http::StatusCode;
use gantry_control::Control;
use gantry_types::EcsError;
use std::sync::Arc;

#[derive(Clone)]
pub struct Api {
    pub control: Control,
    pub logs: Arc<gantry_control::logfeed::Logs>,
    pub metrics: gantry_control::metrics::Metrics,
    /// The bearer token `GET /metrics` requires, if any.
    pub metrics_token: Option<String>,
    pub elb: gantry_control::elb::Elb,
    /// Secrets Manager, with the key values are sealed with.
    pub secrets: Option<gantry_control::secrets::SecretsManager>,
    /// Parameter Store, sealing with the same key.
    pub parameters: Option<gantry_control::parameters::ParameterStore>,
    /// What runs ECS Exec sessions (the in-process agent of `gantry dev`); None: sessions
    /// cannot be opened on this server.
    pub exec: Option<Arc<dyn gantry_control::exec::ExecRunner>>,
    /// Request rates per access key (ThrottlingException beyond), checked once the
    /// signature is verified so only a key's holder spends its tokens.
    pub throttle: Arc<gantry_control::quotas::TokenBuckets>,
}

tokio::task_local! {
    /// Who signed the request being handled (for the operations that answer about the
    /// caller: GetCallerIdentity, GetUser, CreateAccessKey without a user name).
    pub static CALLER: gantry_control::iam::Caller;
    /// The Host the request was sent to (ExecuteCommand's stream URL is on it).
    pub static HOST: String;
}

/// The caller of the request being handled (root of `account` outside a request).
pub fn caller(account: &str) -> gantry_control::iam::Caller {
    CALLER
        .try_with(Clone::clone)
        .unwrap_or_else(|_| gantry_control::iam::Caller::Root {
            account: account.to_string(),
        })
}

/// An error in a service's terms: type name, message, whether it is the server's fault.
#[derive(Debug)]
pub struct ApiError {
    pub kind: String,
    pub message: String,
    pub status: StatusCode,
}

impl ApiError {
    pub fn new(kind: &str, message: impl Into<String>, status: StatusCode) -> ApiError {
        ApiError {
            kind: kind.into(),
            message: message.into(),
            status,
        }
    }
    pub fn client(kind: &str, message: impl Into<String>) -> ApiError {
        Self::new(kind, message, StatusCode::BAD_REQUEST)
    }

    /// An error a service names by its model's shape: the server's fault for the internal
    /// failure shapes, unavailable when the store is, the client's otherwise.
    pub fn of_shape(shape: &str, message: impl Into<String>) -> ApiError {
        let status = match shape {
            "InternalFailure" | "InternalServerException" | "InternalServiceFault" | "InternalServiceException" => {
                StatusCode::INTERNAL_SERVER_ERROR
            }
            "ServiceUnavailable" => StatusCode::SERVICE_UNAVAILABLE,
            _ => StatusCode::BAD_REQUEST,
        };
        ApiError::new(shape, message, status)
    }
}

impl From<EcsError> for ApiError {
    fn from(e: EcsError) -> ApiError {
        let status = if e.is_server_fault() {
            StatusCode::INTERNAL_SERVER_ERROR
        } else {
            StatusCode::BAD_REQUEST
        };
        ApiError::new(e.aws_type(), e.to_string(), status)
    }
}

impl From<AuthError> for ApiError {
    fn from(e: AuthError) -> ApiError {
        let status = if matches!(e, AuthError::Missing) {
            StatusCode::FORBIDDEN
        } else {
            StatusCode::BAD_REQUEST
        };
        ApiError::new(e.aws_type(), e.to_string(), status)
    }
}
