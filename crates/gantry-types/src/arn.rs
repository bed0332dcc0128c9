//! ARNs: `arn:aws:ecs:<region>:<account>:<type>/<...>`.

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Scope {
    pub account: String,
    pub region: String,
}

impl Scope {
    pub fn cluster_arn(&self, name: &str) -> String {
        format!("arn:aws:ecs:{}:{}:cluster/{name}", self.region, self.account)
    }
    pub fn task_definition_arn(&self, family: &str, revision: i64) -> String {
        format!(
            "arn:aws:ecs:{}:{}:task-definition/{family}:{revision}",
            self.region, self.account
        )
    }
    pub fn task_arn(&self, cluster: &str, id: &str) -> String {
        format!("arn:aws:ecs:{}:{}:task/{cluster}/{id}", self.region, self.account)
    }
    pub fn container_arn(&self, cluster: &str, task_id: &str, container_id: &str) -> String {
        format!(
            "arn:aws:ecs:{}:{}:container/{cluster}/{task_id}/{container_id}",
            self.region, self.account
        )
    }
    /// The ARN formats before ECS's long format (account settings `*LongArnFormat` disabled):
    /// no cluster in task, container, service and container instance ARNs.
    pub fn short_task_arn(&self, id: &str) -> String {
        format!("arn:aws:ecs:{}:{}:task/{id}", self.region, self.account)
    }
    pub fn short_container_arn(&self, container_id: &str) -> String {
        format!("arn:aws:ecs:{}:{}:container/{container_id}", self.region, self.account)
    }
    pub fn service_arn(&self, cluster: Option<&str>, name: &str) -> String {
        match cluster {
            Some(c) => format!("arn:aws:ecs:{}:{}:service/{c}/{name}", self.region, self.account),
            None => format!("arn:aws:ecs:{}:{}:service/{name}", self.region, self.account),
        }
    }
    pub fn container_instance_arn(&self, cluster: Option<&str>, id: &str) -> String {
        match cluster {
            Some(c) => format!(
                "arn:aws:ecs:{}:{}:container-instance/{c}/{id}",
                self.region, self.account
            ),
            None => format!("arn:aws:ecs:{}:{}:container-instance/{id}", self.region, self.account),
        }
    }
    pub fn capacity_provider_arn(&self, name: &str) -> String {
        format!("arn:aws:ecs:{}:{}:capacity-provider/{name}", self.region, self.account)
    }
}

/// A cluster given by name or ARN -> its name.
pub fn cluster_name(s: &str) -> &str {
    match s.strip_prefix("arn:") {
        Some(_) => s.rsplit_once(":cluster/").map(|(_, n)| n).unwrap_or(s),
        None => s,
    }
}

/// A task given by id or ARN -> its id.
pub fn task_id(s: &str) -> &str {
    if s.starts_with("arn:") {
        s.rsplit('/').next().unwrap_or(s)
    } else {
        s
    }
}

/// `family`, `family:rev`, or an ARN -> (family, revision).
pub fn task_definition_ref(s: &str) -> Option<(String, Option<i64>)> {
    let s = match s.strip_prefix("arn:") {
        Some(_) => s.rsplit_once(":task-definition/")?.1,
        None => s,
    };
    match s.rsplit_once(':') {
        Some((f, r)) => Some((f.to_string(), Some(r.parse().ok()?))),
        None => Some((s.to_string(), None)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_references() {
        assert_eq!(cluster_name("arn:aws:ecs:us-east-1:1:cluster/prod"), "prod");
        assert_eq!(cluster_name("prod"), "prod");
        assert_eq!(task_id("arn:aws:ecs:us-east-1:1:task/prod/abc"), "abc");
        assert_eq!(task_definition_ref("web:3"), Some(("web".into(), Some(3))));
        assert_eq!(task_definition_ref("web"), Some(("web".into(), None)));
        assert_eq!(
            task_definition_ref("arn:aws:ecs:us-east-1:1:task-definition/web:7"),
            Some(("web".into(), Some(7)))
        );
        assert_eq!(task_definition_ref("web:x"), None);
    }
}
