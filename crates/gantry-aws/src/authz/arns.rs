//! What requests of CloudWatch Logs, ELBv2, CloudWatch, ACM, EC2 and Cloud Map name, as each
//! service's authorisation reference defines it. Everything here is in the request itself (ARNs, names, ids); a resource being
//! created is named by its ARN with `*` for the id it does not have yet, as AWS asks IAM.
//! Operations that support no resource-level permission (ELBv2's and EC2's Describe*) name
//! none and are checked against `*`.

use super::{request_tags, Named};
use gantry_types::arn::Scope;
use serde_json::Value;

fn text<'a>(input: &'a Value, key: &str) -> Option<&'a str> {
    input.get(key).and_then(Value::as_str)
}

fn strings(input: &Value, key: &str) -> Vec<String> {
    let list = input.get(key).and_then(Value::as_array).into_iter().flatten();
    list.filter_map(|v| v.as_str().map(String::from)).collect()
}

/// What a request of `service` (its signing name) names.
pub fn named(scope: &Scope, service: &str, operation: &str, input: &Value) -> Named {
    match service {
        "logs" => (logs(scope, operation, input), vec![]),
        "elasticloadbalancing" => (
            elbv2(scope, operation, input),
            request_tags(input, "Tags", "Key", "Value"),
        ),
        "monitoring" => (
            cloudwatch(scope, operation, input),
            request_tags(input, "Tags", "Key", "Value"),
        ),
        "acm" => (
            text(input, "CertificateArn").map(String::from).into_iter().collect(),
            request_tags(input, "Tags", "Key", "Value"),
        ),
        "ec2" => (ec2(scope, operation, input), vec![]),
        "servicediscovery" => cloudmap(scope, operation, input),
        _ => (vec![], vec![]),
    }
}

/// Cloud Map names a namespace `namespace/ID` and a service `service/ID` (an id may be given
/// as the ARN itself); its Create*Namespace operations name none but carry request tags, and
/// DiscoverInstances names none but has the namespace and service names as condition keys.
fn cloudmap(scope: &Scope, operation: &str, input: &Value) -> Named {
    let arn = |kind: &str, id: &str| match id.starts_with("arn:") {
        true => id.to_string(),
        false => format!(
            "arn:aws:servicediscovery:{}:{}:{kind}/{id}",
            scope.region, scope.account
        ),
    };
    let id = text(input, "Id");
    let named = if let Some(a) = text(input, "ResourceARN") {
        Some(a.to_string())
    } else if let Some(service) = text(input, "ServiceId") {
        Some(arn("service", service))
    } else if let Some(namespace) = text(input, "NamespaceId") {
        Some(arn("namespace", namespace))
    } else if operation.ends_with("Namespace") {
        id.map(|id| arn("namespace", id))
    } else if operation.ends_with("Service") {
        id.map(|id| arn("service", id))
    } else {
        None
    };
    let mut context = request_tags(input, "Tags", "Key", "Value");
    if operation == "DiscoverInstances" {
        for (key, member) in [("NamespaceName", "NamespaceName"), ("ServiceName", "ServiceName")] {
            if let Some(v) = text(input, member) {
                context.push((format!("servicediscovery:{key}"), vec![v.to_string()]));
            }
        }
    }
    (named.into_iter().collect(), context)
}

/// A log group's name from `logGroupName`, or `logGroupIdentifier` (a name or an ARN).
fn log_group(input: &Value) -> Option<&str> {
    if let Some(name) = text(input, "logGroupName") {
        return Some(name);
    }
    let id = text(input, "logGroupIdentifier")?;
    Some(match id.split_once(":log-group:") {
        Some((_, rest)) => rest.strip_suffix(":*").unwrap_or(rest),
        None => id,
    })
}

/// CloudWatch Logs names a group as `log-group:NAME:log-stream:` and a stream as
/// `log-group:NAME:log-stream:STREAM` (so a policy's `log-group:NAME:*` covers both), and
/// DescribeLogGroups as `log-group::log-stream:`, as its AccessDenied messages show.
fn logs(scope: &Scope, operation: &str, input: &Value) -> Vec<String> {
    let arn = |group: &str, stream: &str| {
        format!(
            "arn:aws:logs:{}:{}:log-group:{group}:log-stream:{stream}",
            scope.region, scope.account
        )
    };
    if operation == "DescribeLogGroups" {
        return vec![arn("", "")];
    }
    let Some(group) = log_group(input) else {
        return vec![];
    };
    let on_stream = matches!(
        operation,
        "CreateLogStream" | "DeleteLogStream" | "PutLogEvents" | "GetLogEvents"
    );
    let stream = text(input, "logStreamName").filter(|_| on_stream).unwrap_or("");
    vec![arn(group, stream)]
}

/// ELBv2: the load balancer, listener, rule or target group the request acts on; a new load
/// balancer or target group as `loadbalancer/app/NAME/*` or `targetgroup/NAME/*`.
fn elbv2(scope: &Scope, operation: &str, input: &Value) -> Vec<String> {
    if operation.starts_with("Describe") {
        return vec![];
    }
    let arn = |resource: String| {
        format!(
            "arn:aws:elasticloadbalancing:{}:{}:{resource}",
            scope.region, scope.account
        )
    };
    match operation {
        "CreateLoadBalancer" => {
            let kind = match text(input, "Type") {
                Some("network") => "net",
                Some("gateway") => "gwy",
                _ => "app",
            };
            let name = text(input, "Name").unwrap_or_default();
            return vec![arn(format!("loadbalancer/{kind}/{name}/*"))];
        }
        "CreateTargetGroup" => {
            return vec![arn(format!(
                "targetgroup/{}/*",
                text(input, "Name").unwrap_or_default()
            ))];
        }
        "SetRulePriorities" => {
            let list = input
                .get("RulePriorities")
                .and_then(Value::as_array)
                .into_iter()
                .flatten();
            return list.filter_map(|p| text(p, "RuleArn").map(String::from)).collect();
        }
        _ => {}
    }
    // The most specific ARN the request carries: a rule's, a listener's (CreateRule names its
    // listener), a load balancer's (CreateListener names its load balancer), a target
    // group's; tagging names each resource.
    let one = ["RuleArn", "ListenerArn", "LoadBalancerArn", "TargetGroupArn"]
        .iter()
        .find_map(|k| text(input, k));
    match one {
        Some(a) => vec![a.to_string()],
        None => strings(input, "ResourceArns"),
    }
}

/// CloudWatch: alarms by name (`alarm:NAME`), tagged resources by ARN.
fn cloudwatch(scope: &Scope, operation: &str, input: &Value) -> Vec<String> {
    let alarm = |name: &str| format!("arn:aws:cloudwatch:{}:{}:alarm:{name}", scope.region, scope.account);
    match operation {
        "PutMetricAlarm" | "SetAlarmState" | "DescribeAlarmHistory" => {
            text(input, "AlarmName").map(alarm).into_iter().collect()
        }
        "DeleteAlarms" | "EnableAlarmActions" | "DisableAlarmActions" => {
            strings(input, "AlarmNames").iter().map(|n| alarm(n)).collect()
        }
        "TagResource" | "UntagResource" | "ListTagsForResource" => {
            text(input, "ResourceARN").map(String::from).into_iter().collect()
        }
        _ => vec![],
    }
}

/// EC2: a security group by id (`security-group/ID`), a new one as `security-group/*`, and
/// the resources a tagging request names by their id's prefix.
fn ec2(scope: &Scope, operation: &str, input: &Value) -> Vec<String> {
    let arn = |resource: String| format!("arn:aws:ec2:{}:{}:{resource}", scope.region, scope.account);
    let by_id = |id: &str| {
        let kind = [("sg-", "security-group"), ("subnet-", "subnet"), ("vpc-", "vpc")]
            .iter()
            .find(|(prefix, _)| id.starts_with(prefix))
            .map(|(_, kind)| *kind)?;
        Some(arn(format!("{kind}/{id}")))
    };
    match operation {
        "CreateSecurityGroup" => vec![arn("security-group/*".into())],
        "CreateTags" | "DeleteTags" => strings(input, "Resources").iter().filter_map(|id| by_id(id)).collect(),
        o if o.starts_with("Describe") => vec![],
        _ => text(input, "GroupId").and_then(by_id).into_iter().collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn scope() -> Scope {
        Scope {
            account: "123456789012".into(),
            region: "us-east-1".into(),
        }
    }

    fn arns(service: &str, operation: &str, input: Value) -> Vec<String> {
        named(&scope(), service, operation, &input).0
    }

    #[test]
    fn logs_name_groups_and_streams_as_their_access_denied_messages_do() {
        let base = "arn:aws:logs:us-east-1:123456789012:log-group:";
        assert_eq!(
            arns("logs", "CreateLogGroup", json!({"logGroupName": "/app"})),
            [format!("{base}/app:log-stream:")]
        );
        assert_eq!(
            arns(
                "logs",
                "PutLogEvents",
                json!({"logGroupName": "/app", "logStreamName": "s/1"})
            ),
            [format!("{base}/app:log-stream:s/1")]
        );
        // A stream named on a group-wide read (FilterLogEvents takes logStreamNames) is
        // still the group.
        assert_eq!(
            arns(
                "logs",
                "DescribeLogStreams",
                json!({"logGroupName": "/app", "logStreamName": "x"})
            ),
            [format!("{base}/app:log-stream:")]
        );
        let by_arn = json!({"logGroupIdentifier": format!("{base}/app:*"), "logStreamName": "s"});
        assert_eq!(
            arns("logs", "GetLogEvents", by_arn),
            [format!("{base}/app:log-stream:s")]
        );
        assert_eq!(
            arns("logs", "DescribeLogGroups", json!({})),
            [format!("{base}:log-stream:")]
        );
    }

    #[test]
    fn elbv2_names_the_most_specific_arn_and_new_resources_with_a_wildcard_id() {
        let lb = "arn:aws:elasticloadbalancing:us-east-1:123456789012:loadbalancer/app/web/1";
        let listener = "arn:aws:elasticloadbalancing:us-east-1:123456789012:listener/app/web/1/2";
        assert_eq!(
            arns(
                "elasticloadbalancing",
                "DeleteLoadBalancer",
                json!({"LoadBalancerArn": lb})
            ),
            [lb]
        );
        assert_eq!(
            arns(
                "elasticloadbalancing",
                "CreateRule",
                json!({"ListenerArn": listener, "Priority": 1})
            ),
            [listener]
        );
        assert_eq!(
            arns(
                "elasticloadbalancing",
                "CreateLoadBalancer",
                json!({"Name": "web", "Type": "network"})
            ),
            ["arn:aws:elasticloadbalancing:us-east-1:123456789012:loadbalancer/net/web/*"]
        );
        assert_eq!(
            arns(
                "elasticloadbalancing",
                "AddTags",
                json!({"ResourceArns": [lb, listener]})
            ),
            [lb, listener]
        );
        assert!(arns(
            "elasticloadbalancing",
            "DescribeListeners",
            json!({"LoadBalancerArn": lb})
        )
        .is_empty());
        let rules = json!({"RulePriorities": [{"RuleArn": "r1", "Priority": 1}, {"RuleArn": "r2", "Priority": 2}]});
        assert_eq!(arns("elasticloadbalancing", "SetRulePriorities", rules), ["r1", "r2"]);
    }

    #[test]
    fn cloudwatch_ec2_and_tagging_name_their_resources() {
        assert_eq!(
            arns("monitoring", "DeleteAlarms", json!({"AlarmNames": ["a", "b"]})),
            [
                "arn:aws:cloudwatch:us-east-1:123456789012:alarm:a",
                "arn:aws:cloudwatch:us-east-1:123456789012:alarm:b"
            ]
        );
        assert_eq!(
            arns("ec2", "AuthorizeSecurityGroupIngress", json!({"GroupId": "sg-1"})),
            ["arn:aws:ec2:us-east-1:123456789012:security-group/sg-1"]
        );
        assert_eq!(
            arns("ec2", "CreateTags", json!({"Resources": ["sg-1", "i-2", "subnet-3"]})),
            [
                "arn:aws:ec2:us-east-1:123456789012:security-group/sg-1",
                "arn:aws:ec2:us-east-1:123456789012:subnet/subnet-3"
            ]
        );
        assert!(arns("ec2", "DescribeSecurityGroups", json!({"GroupIds": ["sg-1"]})).is_empty());
        assert_eq!(
            arns("servicediscovery", "TagResource", json!({"ResourceARN": "arn:x"})),
            ["arn:x"]
        );
        let (_, ctx) = named(
            &scope(),
            "elasticloadbalancing",
            "AddTags",
            &json!({"Tags": [{"Key": "team", "Value": "web"}]}),
        );
        assert_eq!(
            ctx,
            [
                ("aws:RequestTag/team".to_string(), vec!["web".to_string()]),
                ("aws:TagKeys".to_string(), vec!["team".to_string()])
            ]
        );
    }

    #[test]
    fn cloud_map_names_namespaces_and_services() {
        let ns = "arn:aws:servicediscovery:us-east-1:123456789012:namespace/ns-1";
        let srv = "arn:aws:servicediscovery:us-east-1:123456789012:service/srv-2";
        assert_eq!(arns("servicediscovery", "GetNamespace", json!({"Id": "ns-1"})), [ns]);
        assert_eq!(arns("servicediscovery", "DeleteNamespace", json!({"Id": ns})), [ns]);
        assert_eq!(
            arns("servicediscovery", "UpdateHttpNamespace", json!({"Id": "ns-1"})),
            [ns]
        );
        assert_eq!(
            arns(
                "servicediscovery",
                "CreateService",
                json!({"Name": "a", "NamespaceId": "ns-1"})
            ),
            [ns]
        );
        assert_eq!(arns("servicediscovery", "DeleteService", json!({"Id": "srv-2"})), [srv]);
        assert_eq!(
            arns(
                "servicediscovery",
                "RegisterInstance",
                json!({"ServiceId": "srv-2", "InstanceId": "i"})
            ),
            [srv]
        );
        assert_eq!(
            arns("servicediscovery", "ListInstances", json!({"ServiceId": "srv-2"})),
            [srv]
        );
        assert!(arns("servicediscovery", "ListNamespaces", json!({})).is_empty());
        assert!(arns("servicediscovery", "GetOperation", json!({"OperationId": "o"})).is_empty());
        let (none, ctx) = named(
            &scope(),
            "servicediscovery",
            "CreateHttpNamespace",
            &json!({"Name": "n", "Tags": [{"Key": "team", "Value": "web"}]}),
        );
        assert!(none.is_empty());
        assert!(ctx.contains(&("aws:RequestTag/team".to_string(), vec!["web".to_string()])));
        let (none, ctx) = named(
            &scope(),
            "servicediscovery",
            "DiscoverInstances",
            &json!({"NamespaceName": "corp", "ServiceName": "web"}),
        );
        assert!(none.is_empty());
        assert_eq!(
            ctx,
            [
                ("servicediscovery:NamespaceName".to_string(), vec!["corp".to_string()]),
                ("servicediscovery:ServiceName".to_string(), vec!["web".to_string()])
            ]
        );
    }
}
