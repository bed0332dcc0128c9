//! Elastic Load Balancing v2 (AWS Query, version 2015-12-01): the operations Gantry serves,
//! over `gantry_control::elb`. Inputs arrive decoded by the Query codec from the model.

use crate::api::{Api, ApiError};
use crate::protocol::Reply;
use gantry_types::arn::Scope;
use gantry_types::elbv2::ElbError;
use serde_json::Value;

impl From<ElbError> for ApiError {
    fn from(e: ElbError) -> ApiError {
        ApiError::of_shape(e.shape, e.message)
    }
}

/// The default VPC as EC2 describes it, for a new load balancer's subnets and groups.
async fn default_vpc(api: &Api, scope: &Scope) -> Result<gantry_control::elb::Vpc, ApiError> {
    let subnets = crate::ec2::subnets(api, scope).await?;
    let groups = api.control.ec2().groups(scope).await?;
    Ok(gantry_control::elb::Vpc {
        id: gantry_control::ec2::vpc_id(scope),
        subnets: subnets.into_iter().map(|s| (s.id, s.zone)).collect(),
        groups: groups.into_iter().map(|g| g.id).collect(),
    })
}

/// The registry's entry point.
pub fn handler<'a>(api: &'a Api, scope: &'a Scope, op: &'a str, input: Value) -> Reply<'a> {
    Box::pin(dispatch(api, scope, op, input))
}

async fn dispatch(api: &Api, scope: &Scope, op: &str, input: Value) -> Result<Value, ApiError> {
    let elb = &api.elb;
    let out = match op {
        "CreateLoadBalancer" => {
            elb.create_load_balancer(scope, input, &default_vpc(api, scope).await?)
                .await
        }
        "SetSecurityGroups" => {
            elb.set_security_groups(scope, input, &default_vpc(api, scope).await?)
                .await
        }
        "DescribeLoadBalancers" => elb.describe_load_balancers(scope, input).await,
        "DeleteLoadBalancer" => elb.delete_load_balancer(scope, input).await,
        "DescribeLoadBalancerAttributes" => elb.describe_load_balancer_attributes(scope, input).await,
        "ModifyLoadBalancerAttributes" => elb.modify_load_balancer_attributes(scope, input).await,
        "CreateTargetGroup" => elb.create_target_group(scope, input).await,
        "DescribeTargetGroups" => elb.describe_target_groups(scope, input).await,
        "ModifyTargetGroup" => elb.modify_target_group(scope, input).await,
        "DeleteTargetGroup" => elb.delete_target_group(scope, input).await,
        "DescribeTargetGroupAttributes" => elb.describe_target_group_attributes(scope, input).await,
        "ModifyTargetGroupAttributes" => elb.modify_target_group_attributes(scope, input).await,
        "CreateListener" => elb.create_listener(scope, input).await,
        "DescribeListeners" => elb.describe_listeners(scope, input).await,
        "ModifyListener" => elb.modify_listener(scope, input).await,
        "DeleteListener" => elb.delete_listener(scope, input).await,
        "AddListenerCertificates" => elb.add_listener_certificates(scope, input).await,
        "RemoveListenerCertificates" => elb.remove_listener_certificates(scope, input).await,
        "DescribeListenerCertificates" => elb.describe_listener_certificates(scope, input).await,
        "CreateRule" => elb.create_rule(scope, input).await,
        "DescribeRules" => elb.describe_rules(scope, input).await,
        "ModifyRule" => elb.modify_rule(scope, input).await,
        "DeleteRule" => elb.delete_rule(scope, input).await,
        "SetRulePriorities" => elb.set_rule_priorities(scope, input).await,
        "RegisterTargets" => elb.register_targets(scope, input).await,
        "DeregisterTargets" => elb.deregister_targets(scope, input).await,
        "DescribeTargetHealth" => elb.describe_target_health(scope, input).await,
        "AddTags" => elb.add_tags(scope, input).await,
        "RemoveTags" => elb.remove_tags(scope, input).await,
        "DescribeTags" => elb.describe_tags(scope, input).await,
        other => {
            return Err(ApiError::client(
                "InvalidAction",
                format!("The action {other} is not valid for this web service (Gantry does not implement it yet)."),
            ))
        }
    };
    Ok(out?)
}
