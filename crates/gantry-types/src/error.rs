//! Domain errors, one variant per ECS error type. gantry-aws maps them to `__type` and status.

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum EcsError {
    /// The request is wrong in a way the client can fix (ECS's catch-all).
    #[error("{0}")]
    Client(String),
    #[error("{0}")]
    InvalidParameter(String),
    #[error("{0}")]
    ClusterNotFound(String),
    #[error("{0}")]
    ClusterContainsTasks(String),
    #[error("{0}")]
    ClusterContainsServices(String),
    #[error("{0}")]
    ResourceNotFound(String),
    #[error("{0}")]
    ServiceNotFound(String),
    #[error("{0}")]
    ServiceNotActive(String),
    #[error("{0}")]
    TargetNotFound(String),
    #[error("{0}")]
    ResourceInUse(String),
    #[error("{0}")]
    AttributeLimitExceeded(String),
    #[error("{0}")]
    ServiceDeploymentNotFound(String),
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    NamespaceNotFound(String),
    #[error("{0}")]
    TaskSetNotFound(String),
    #[error("{0}")]
    Server(String),
    /// A rate quota is used up for now (the SDKs back off and retry).
    #[error("{0}")]
    Throttling(String),
}

impl EcsError {
    pub fn client(m: impl Into<String>) -> EcsError {
        EcsError::Client(m.into())
    }
    pub fn invalid(m: impl Into<String>) -> EcsError {
        EcsError::InvalidParameter(m.into())
    }
    pub fn aws_type(&self) -> &'static str {
        match self {
            EcsError::Client(_) => "ClientException",
            EcsError::InvalidParameter(_) => "InvalidParameterException",
            EcsError::ClusterNotFound(_) => "ClusterNotFoundException",
            EcsError::ClusterContainsTasks(_) => "ClusterContainsTasksException",
            EcsError::ClusterContainsServices(_) => "ClusterContainsServicesException",
            EcsError::ResourceNotFound(_) => "ResourceNotFoundException",
            EcsError::ServiceNotFound(_) => "ServiceNotFoundException",
            EcsError::ServiceNotActive(_) => "ServiceNotActiveException",
            EcsError::TargetNotFound(_) => "TargetNotFoundException",
            EcsError::ResourceInUse(_) => "ResourceInUseException",
            EcsError::AttributeLimitExceeded(_) => "AttributeLimitExceededException",
            EcsError::ServiceDeploymentNotFound(_) => "ServiceDeploymentNotFoundException",
            EcsError::Conflict(_) => "ConflictException",
            EcsError::NamespaceNotFound(_) => "NamespaceNotFoundException",
            EcsError::TaskSetNotFound(_) => "TaskSetNotFoundException",
            EcsError::Server(_) => "ServerException",
            EcsError::Throttling(_) => "ThrottlingException",
        }
    }
    pub fn is_server_fault(&self) -> bool {
        matches!(self, EcsError::Server(_))
    }
}
