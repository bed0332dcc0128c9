//! What an ECS request names, for authorisation as ECS's service authorisation reference
//! defines it: the resource ARNs each operation acts on (a cluster, a task definition
//! revision, a service, tasks, a tagged resource) and the condition keys it carries
//! (ecs:cluster, ecs:task-definition, aws:RequestTag/..., aws:TagKeys).

use super::{request_tags, Named};
use crate::api::Api;
use gantry_types::arn::Scope;
use serde_json::Value;

fn arn(scope: &Scope, resource: &str) -> String {
    format!("arn:aws:ecs:{}:{}:{resource}", scope.region, scope.account)
}

/// A cluster's name from a name or an ARN (default: "default"), read as the handlers read it.
fn cluster_name(input: &Value) -> String {
    let given = input.get("cluster").and_then(Value::as_str).unwrap_or("default");
    gantry_types::arn::cluster_name(given).to_string()
}

/// A task's or service's ARN from an id, name or ARN, in its cluster (long ARN format).
fn in_cluster(scope: &Scope, kind: &str, cluster: &str, given: &str) -> String {
    if given.starts_with("arn:") {
        given.to_string()
    } else {
        arn(scope, &format!("{kind}/{cluster}/{given}"))
    }
}

/// A task definition's revision ARN from `family`, `family:revision` or an ARN: a bare family
/// is its latest ACTIVE revision, as ECS resolves it before asking IAM.
async fn task_definition_arn(api: &Api, scope: &Scope, given: &str) -> String {
    if given.starts_with("arn:") {
        return given.to_string();
    }
    if !given.contains(':') {
        if let Ok((td, _, _)) = api.control.task_definition(scope, given).await {
            if let Some(a) = td.definition["taskDefinitionArn"].as_str() {
                return a.to_string();
            }
        }
    }
    arn(scope, &format!("task-definition/{given}"))
}

fn strings(input: &Value, key: &str) -> Vec<String> {
    let list = input.get(key).and_then(Value::as_array).into_iter().flatten();
    list.filter_map(|v| v.as_str().map(String::from)).collect()
}

/// What an ECS operation names; `*` for the operations without a resource of their own.
pub async fn named(api: &Api, scope: &Scope, op: &str, input: &Value) -> Named {
    let cluster = cluster_name(input);
    let cluster_arn = arn(scope, &format!("cluster/{cluster}"));
    let on_cluster = || vec![("ecs:cluster".to_string(), vec![cluster_arn.clone()])];
    let mut ctx = request_tags(input, "tags", "key", "value");
    let resources = match op {
        "CreateCluster" => {
            let name = input.get("clusterName").and_then(Value::as_str).unwrap_or("default");
            vec![arn(scope, &format!("cluster/{name}"))]
        }
        "DescribeClusters" => {
            let mut names = strings(input, "clusters");
            if names.is_empty() {
                names.push("default".into());
            }
            names
                .iter()
                .map(|n| cluster_name(&serde_json::json!({ "cluster": n })))
                .map(|n| arn(scope, &format!("cluster/{n}")))
                .collect()
        }
        "DeleteCluster" | "UpdateCluster" | "UpdateClusterSettings" | "PutClusterCapacityProviders" => {
            vec![cluster_arn.clone()]
        }
        "RunTask" | "StartTask" => {
            let td = input.get("taskDefinition").and_then(Value::as_str).unwrap_or_default();
            let td = task_definition_arn(api, scope, td).await;
            ctx.extend(on_cluster());
            ctx.push(("ecs:task-definition".into(), vec![td.clone()]));
            vec![td]
        }
        "StopTask" | "DescribeTasks" | "UpdateTaskProtection" | "GetTaskProtection" | "ExecuteCommand" => {
            ctx.extend(on_cluster());
            if let Some(c) = input.get("container").and_then(Value::as_str) {
                ctx.push(("ecs:container-name".into(), vec![c.to_string()]));
            }
            let mut tasks = strings(input, "tasks");
            if let Some(t) = input.get("task").and_then(Value::as_str) {
                tasks.push(t.to_string());
            }
            tasks.iter().map(|t| in_cluster(scope, "task", &cluster, t)).collect()
        }
        "CreateService" | "UpdateService" | "DeleteService" | "DescribeServices" => {
            ctx.extend(on_cluster());
            if let Some(td) = input.get("taskDefinition").and_then(Value::as_str) {
                ctx.push((
                    "ecs:task-definition".into(),
                    vec![task_definition_arn(api, scope, td).await],
                ));
            }
            let mut services = strings(input, "services");
            for key in ["service", "serviceName"] {
                if let Some(s) = input.get(key).and_then(Value::as_str) {
                    services.push(s.to_string());
                }
            }
            services
                .iter()
                .map(|s| in_cluster(scope, "service", &cluster, s))
                .collect()
        }
        "ListTasks" | "ListServices" | "ListContainerInstances" | "DescribeContainerInstances" => {
            ctx.extend(on_cluster());
            vec![]
        }
        "TagResource" | "UntagResource" | "ListTagsForResource" => {
            if op == "UntagResource" {
                ctx.push(("aws:TagKeys".into(), strings(input, "tagKeys")));
            }
            input
                .get("resourceArn")
                .and_then(Value::as_str)
                .map(String::from)
                .into_iter()
                .collect()
        }
        _ => vec![],
    };
    (resources, ctx)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn names_and_arns_become_the_arns_ecs_authorises() {
        let s = Scope {
            account: "123456789012".into(),
            region: "us-east-1".into(),
        };
        assert_eq!(cluster_name(&json!({})), "default");
        assert_eq!(
            cluster_name(&json!({"cluster": "arn:aws:ecs:us-east-1:1:cluster/prod"})),
            "prod"
        );
        assert_eq!(
            in_cluster(&s, "task", "prod", "abc"),
            "arn:aws:ecs:us-east-1:123456789012:task/prod/abc"
        );
        let given = "arn:aws:ecs:us-east-1:123456789012:service/prod/web";
        assert_eq!(in_cluster(&s, "service", "prod", given), given);
        let ctx = request_tags(
            &json!({"tags": [{"key": "team", "value": "web"}, {"key": "env", "value": "prod"}]}),
            "tags",
            "key",
            "value",
        );
        assert_eq!(ctx[0], ("aws:RequestTag/team".to_string(), vec!["web".to_string()]));
        assert_eq!(
            ctx[2],
            ("aws:TagKeys".to_string(), vec!["team".to_string(), "env".to_string()])
        );
        assert!(request_tags(&json!({}), "tags", "key", "value").is_empty());
    }
}
