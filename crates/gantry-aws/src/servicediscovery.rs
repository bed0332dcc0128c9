//! AWS Cloud Map (servicediscovery, AWS JSON 1.1, target prefix Route53AutoNaming_v20170314):
//! the operations Gantry serves, over `gantry_control::cloudmap`. Inputs are checked against
//! the model before they arrive here.

use crate::api::{Api, ApiError};
use crate::protocol::Reply;
use gantry_types::arn::Scope;
use gantry_types::cloudmap::MapError;
use serde_json::Value;

impl From<MapError> for ApiError {
    fn from(e: MapError) -> ApiError {
        ApiError::of_shape(e.shape, e.message)
    }
}

/// The registry's entry point.
pub fn handler<'a>(api: &'a Api, scope: &'a Scope, op: &'a str, input: Value) -> Reply<'a> {
    Box::pin(dispatch(api, scope, op, input))
}

async fn dispatch(api: &Api, scope: &Scope, op: &str, input: Value) -> Result<Value, ApiError> {
    let map = api.control.cloud_map();
    let out = match op {
        "CreatePrivateDnsNamespace" => map.create_namespace(scope, "DNS_PRIVATE", input).await,
        "CreatePublicDnsNamespace" => map.create_namespace(scope, "DNS_PUBLIC", input).await,
        "CreateHttpNamespace" => map.create_namespace(scope, "HTTP", input).await,
        "UpdatePrivateDnsNamespace" => map.update_namespace(scope, "DNS_PRIVATE", input).await,
        "UpdatePublicDnsNamespace" => map.update_namespace(scope, "DNS_PUBLIC", input).await,
        "UpdateHttpNamespace" => map.update_namespace(scope, "HTTP", input).await,
        "GetNamespace" => map.get_namespace(scope, input).await,
        "ListNamespaces" => map.list_namespaces(scope, input).await,
        "DeleteNamespace" => map.delete_namespace(scope, input).await,
        "CreateService" => map.create_service(scope, input).await,
        "GetService" => map.get_service(scope, input).await,
        "ListServices" => map.list_services(scope, input).await,
        "UpdateService" => map.update_service(scope, input).await,
        "DeleteService" => map.delete_service(scope, input).await,
        "RegisterInstance" => map.register_instance(scope, input).await,
        "DeregisterInstance" => map.deregister_instance(scope, input).await,
        "GetInstance" => map.get_instance(scope, input).await,
        "ListInstances" => map.list_instances(scope, input).await,
        "GetInstancesHealthStatus" => map.get_instances_health_status(scope, input).await,
        "UpdateInstanceCustomHealthStatus" => map.update_instance_custom_health_status(scope, input).await,
        "DiscoverInstances" => map.discover_instances(scope, input).await,
        "GetOperation" => map.get_operation(scope, input).await,
        "ListOperations" => map.list_operations(scope, input).await,
        "TagResource" => map.tag_resource(scope, input).await,
        "UntagResource" => map.untag_resource(scope, input).await,
        "ListTagsForResource" => map.list_tags_for_resource(scope, input).await,
        other => {
            return Err(ApiError::client(
                "UnknownOperationException",
                format!("Gantry does not implement the Cloud Map operation {other} yet."),
            ))
        }
    };
    Ok(out?)
}
