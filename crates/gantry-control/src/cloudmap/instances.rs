//! Instances: registration (by API callers and by ECS services for their tasks), custom
//! health status, listing and discovery.

use super::{page, parse, with_token, CloudMap, ListInput};
use gantry_types::arn::Scope;
use gantry_types::cloudmap::{Instance, MapError, Service};
use serde::Deserialize;
use serde_json::{json, Value};
use std::collections::BTreeMap;

/// Custom attributes an instance may carry besides the AWS_ ones.
const MAX_CUSTOM_ATTRIBUTES: usize = 30;
/// Attributes Cloud Map reserves that Gantry does not serve: alias records point at load
/// balancers through Route 53, and EC2 instance ids name EC2 instances.
const REFUSED_ATTRIBUTES: &[&str] = &["AWS_ALIAS_DNS_NAME", "AWS_EC2_INSTANCE_ID"];
const AWS_ATTRIBUTES: &[&str] = &[
    "AWS_INSTANCE_IPV4",
    "AWS_INSTANCE_IPV6",
    "AWS_INSTANCE_PORT",
    "AWS_INSTANCE_CNAME",
    "AWS_INIT_HEALTH_STATUS",
];

fn instance_not_found(id: &str) -> MapError {
    MapError::new("InstanceNotFound", format!("Instance not found: {id}"))
}

/// Checks an instance's attributes against the service: the records it needs (A needs an
/// IPv4 address, AAAA an IPv6 one, SRV a port and an address, CNAME a name), and the limits.
pub fn check_attributes(svc: &Service, id: &str, attrs: &BTreeMap<String, String>) -> Result<(), MapError> {
    let valid_id =
        !id.is_empty() && id.len() <= 64 && id.bytes().all(|b| b.is_ascii_alphanumeric() || b"_/:.@-".contains(&b));
    if !valid_id {
        return Err(MapError::invalid(format!("InstanceId {id} is not valid.")));
    }
    let mut custom = 0;
    for (k, v) in attrs {
        if k.is_empty() || k.len() > 255 || v.len() > 1024 {
            return Err(MapError::invalid(format!(
                "Attribute {k}: keys are 1-255 characters, values at most 1024."
            )));
        }
        if REFUSED_ATTRIBUTES.contains(&k.as_str()) {
            return Err(MapError::invalid(format!("{k} is not supported by Gantry.")));
        }
        if k.starts_with("AWS_") && !AWS_ATTRIBUTES.contains(&k.as_str()) {
            return Err(MapError::invalid(format!("{k} is not a valid reserved attribute.")));
        }
        custom += usize::from(!k.starts_with("AWS_"));
    }
    if custom > MAX_CUSTOM_ATTRIBUTES {
        return Err(MapError::invalid(format!(
            "An instance can have at most {MAX_CUSTOM_ATTRIBUTES} custom attributes."
        )));
    }
    let get = |k: &str| attrs.get(k).map(String::as_str);
    if let Some(ip) = get("AWS_INSTANCE_IPV4") {
        ip.parse::<std::net::Ipv4Addr>()
            .map_err(|_| MapError::invalid(format!("AWS_INSTANCE_IPV4 {ip} is not an IPv4 address.")))?;
    }
    if let Some(ip) = get("AWS_INSTANCE_IPV6") {
        ip.parse::<std::net::Ipv6Addr>()
            .map_err(|_| MapError::invalid(format!("AWS_INSTANCE_IPV6 {ip} is not an IPv6 address.")))?;
    }
    if let Some(p) = get("AWS_INSTANCE_PORT") {
        p.parse::<u16>()
            .map_err(|_| MapError::invalid(format!("AWS_INSTANCE_PORT {p} is not a port (0-65535).")))?;
    }
    match (get("AWS_INIT_HEALTH_STATUS"), &svc.health_check_custom_config) {
        (Some("HEALTHY" | "UNHEALTHY"), Some(_)) | (None, _) => {}
        (Some(_), None) => {
            return Err(MapError::invalid(
                "AWS_INIT_HEALTH_STATUS is only for services with HealthCheckCustomConfig.",
            ))
        }
        (Some(v), Some(_)) => {
            return Err(MapError::invalid(format!(
                "AWS_INIT_HEALTH_STATUS {v} is not HEALTHY or UNHEALTHY."
            )))
        }
    }
    let records = svc.dns_config.iter().flat_map(|d| d.dns_records.iter());
    for r in records {
        let need: &[&str] = match r.kind.as_str() {
            "A" => &["AWS_INSTANCE_IPV4"],
            "AAAA" => &["AWS_INSTANCE_IPV6"],
            "SRV" => &["AWS_INSTANCE_PORT"],
            _ => &["AWS_INSTANCE_CNAME"],
        };
        for k in need {
            if get(k).is_none() {
                return Err(MapError::invalid(format!(
                    "{k} is required: service {} has a{} {} record.",
                    svc.id,
                    if r.kind == "A" || r.kind == "AAAA" { "n" } else { "" },
                    r.kind
                )));
            }
        }
        if r.kind == "SRV" && get("AWS_INSTANCE_IPV4").is_none() && get("AWS_INSTANCE_IPV6").is_none() {
            return Err(MapError::invalid(
                "An SRV record's instance needs AWS_INSTANCE_IPV4 or AWS_INSTANCE_IPV6.",
            ));
        }
    }
    Ok(())
}

impl CloudMap {
    fn instance_key(scope: &Scope, service_id: &str, instance_id: &str) -> String {
        Self::key(scope, &format!("instances/{service_id}/{instance_id}"))
    }

    pub(crate) async fn instances_of(&self, scope: &Scope, service_id: &str) -> Result<Vec<Instance>, MapError> {
        Ok(self
            .records
            .list(&Self::key(scope, &format!("instances/{service_id}/")))
            .await?)
    }

    /// Registers (or re-registers, replacing its attributes) an instance. Its health is
    /// AWS_INIT_HEALTH_STATUS (HEALTHY by default) for services with custom health checks,
    /// kept across re-registration unless given, and UNKNOWN for the others.
    pub async fn register(
        &self,
        scope: &Scope,
        svc: &Service,
        id: &str,
        attrs: BTreeMap<String, String>,
        creator_request_id: Option<String>,
    ) -> Result<(), MapError> {
        check_attributes(svc, id, &attrs)?;
        let key = Self::instance_key(scope, &svc.id, id);
        let account = scope.account.clone();
        let checked = svc.health_check_custom_config.is_some();
        self.records
            .update::<Instance, (), MapError>(&key, |cur| {
                let health = match (attrs.get("AWS_INIT_HEALTH_STATUS"), &cur, checked) {
                    (_, _, false) => "UNKNOWN".to_string(),
                    (Some(h), _, true) => h.clone(),
                    (None, Some(c), true) => c.health.clone(),
                    (None, None, true) => "HEALTHY".to_string(),
                };
                let inst = Instance {
                    id: id.to_string(),
                    creator_request_id: creator_request_id.clone(),
                    attributes: attrs.clone(),
                    created_by_account: account.clone(),
                    health,
                };
                Ok((Some(inst), ()))
            })
            .await
    }

    /// Deregisters an instance; `Ok(false)` when it was not registered.
    pub async fn deregister(&self, scope: &Scope, service_id: &str, id: &str) -> Result<bool, MapError> {
        let key = Self::instance_key(scope, service_id, id);
        self.records
            .update::<Instance, bool, MapError>(&key, |cur| Ok((None, cur.is_some())))
            .await
    }

    /// Sets a custom health status; `Ok(false)` when the instance is not registered.
    pub async fn set_health(&self, scope: &Scope, service_id: &str, id: &str, healthy: bool) -> Result<bool, MapError> {
        let key = Self::instance_key(scope, service_id, id);
        self.records
            .update::<Instance, bool, MapError>(&key, |cur| match cur {
                None => Ok((None, false)),
                Some(mut i) => {
                    i.health = if healthy { "HEALTHY" } else { "UNHEALTHY" }.into();
                    Ok((Some(i), true))
                }
            })
            .await
    }

    pub async fn register_instance(&self, scope: &Scope, input: Value) -> Result<Value, MapError> {
        #[derive(Deserialize)]
        #[serde(rename_all = "PascalCase", deny_unknown_fields)]
        struct Input {
            service_id: String,
            instance_id: String,
            #[serde(default)]
            creator_request_id: Option<String>,
            attributes: BTreeMap<String, String>,
        }
        let input: Input = parse(input)?;
        let svc = self.service(scope, &input.service_id).await?;
        self.register(
            scope,
            &svc,
            &input.instance_id,
            input.attributes,
            input.creator_request_id,
        )
        .await?;
        self.operation(
            scope,
            "REGISTER_INSTANCE",
            &[("SERVICE", &svc.id), ("INSTANCE", &input.instance_id)],
        )
        .await
    }

    pub async fn deregister_instance(&self, scope: &Scope, input: Value) -> Result<Value, MapError> {
        let (svc, id) = self.instance_input(scope, input).await?;
        if !self.deregister(scope, &svc.id, &id).await? {
            return Err(instance_not_found(&id));
        }
        self.operation(scope, "DEREGISTER_INSTANCE", &[("SERVICE", &svc.id), ("INSTANCE", &id)])
            .await
    }

    /// `{"ServiceId", "InstanceId"}` inputs: the service and the instance id.
    async fn instance_input(&self, scope: &Scope, input: Value) -> Result<(Service, String), MapError> {
        #[derive(Deserialize)]
        #[serde(rename_all = "PascalCase", deny_unknown_fields)]
        struct Input {
            service_id: String,
            instance_id: String,
        }
        let input: Input = parse(input)?;
        Ok((self.service(scope, &input.service_id).await?, input.instance_id))
    }

    pub async fn get_instance(&self, scope: &Scope, input: Value) -> Result<Value, MapError> {
        let (svc, id) = self.instance_input(scope, input).await?;
        let key = Self::instance_key(scope, &svc.id, &id);
        let (inst, _) = self
            .records
            .load::<Instance>(&key)
            .await?
            .ok_or_else(|| instance_not_found(&id))?;
        let mut v = json!(inst);
        v.as_object_mut().expect("object").remove("Health");
        Ok(json!({ "ResourceOwner": scope.account, "Instance": v }))
    }

    pub async fn list_instances(&self, scope: &Scope, input: Value) -> Result<Value, MapError> {
        #[derive(Deserialize)]
        #[serde(rename_all = "PascalCase", deny_unknown_fields)]
        struct Input {
            service_id: String,
            #[serde(flatten)]
            page: ListInput,
        }
        let input: Input = parse(input)?;
        let svc = self.service(scope, &input.service_id).await?;
        let all = self.instances_of(scope, &svc.id).await?;
        let (page, next) = page(all, |i| i.id.clone(), &input.page)?;
        let out: Vec<Value> = page
            .iter()
            .map(|i| json!({"Id": i.id, "Attributes": i.attributes, "CreatedByAccount": i.created_by_account}))
            .collect();
        Ok(with_token(
            json!({ "ResourceOwner": scope.account, "Instances": out }),
            next,
        ))
    }

    pub async fn get_instances_health_status(&self, scope: &Scope, input: Value) -> Result<Value, MapError> {
        #[derive(Deserialize)]
        #[serde(rename_all = "PascalCase", deny_unknown_fields)]
        struct Input {
            service_id: String,
            #[serde(default)]
            instances: Option<Vec<String>>,
            #[serde(flatten)]
            page: ListInput,
        }
        let input: Input = parse(input)?;
        let svc = self.service(scope, &input.service_id).await?;
        let all = self.instances_of(scope, &svc.id).await?;
        if let Some(wanted) = &input.instances {
            if let Some(missing) = wanted.iter().find(|w| !all.iter().any(|i| &i.id == *w)) {
                return Err(instance_not_found(missing));
            }
        }
        let chosen: Vec<Instance> = all
            .into_iter()
            .filter(|i| input.instances.as_ref().is_none_or(|w| w.contains(&i.id)))
            .collect();
        let (page, next) = page(chosen, |i| i.id.clone(), &input.page)?;
        let status: BTreeMap<&str, &str> = page.iter().map(|i| (i.id.as_str(), i.health.as_str())).collect();
        Ok(with_token(json!({ "Status": status }), next))
    }

    pub async fn update_instance_custom_health_status(&self, scope: &Scope, input: Value) -> Result<Value, MapError> {
        #[derive(Deserialize)]
        #[serde(rename_all = "PascalCase", deny_unknown_fields)]
        struct Input {
            service_id: String,
            instance_id: String,
            status: String,
        }
        let input: Input = parse(input)?;
        let svc = self.service(scope, &input.service_id).await?;
        if svc.health_check_custom_config.is_none() {
            return Err(MapError::new(
                "CustomHealthNotFound",
                format!("Service {} does not have a custom health check configuration.", svc.id),
            ));
        }
        let healthy = match input.status.as_str() {
            "HEALTHY" => true,
            "UNHEALTHY" => false,
            other => {
                return Err(MapError::invalid(format!(
                    "Status {other} is not HEALTHY or UNHEALTHY."
                )))
            }
        };
        if !self.set_health(scope, &svc.id, &input.instance_id, healthy).await? {
            return Err(instance_not_found(&input.instance_id));
        }
        Ok(json!({}))
    }

    pub async fn discover_instances(&self, scope: &Scope, input: Value) -> Result<Value, MapError> {
        #[derive(Deserialize)]
        #[serde(rename_all = "PascalCase", deny_unknown_fields)]
        struct Input {
            namespace_name: String,
            service_name: String,
            #[serde(default)]
            max_results: Option<i64>,
            #[serde(default)]
            query_parameters: BTreeMap<String, String>,
            #[serde(default)]
            optional_parameters: BTreeMap<String, String>,
            #[serde(default)]
            health_status: Option<String>,
            #[serde(default)]
            owner_account: Option<String>,
        }
        let input: Input = parse(input)?;
        super::own_account(scope, input.owner_account.as_deref())?;
        let max = match input.max_results {
            None => 100,
            Some(n @ 1..=1000) => n as usize,
            Some(n) => return Err(MapError::invalid(format!("MaxResults {n} must be between 1 and 1000."))),
        };
        let ns_name = input.namespace_name.trim_end_matches('.');
        let ns = self
            .namespaces(scope)
            .await?
            .into_iter()
            .map(|r| r.item)
            .find(|n| n.name.eq_ignore_ascii_case(ns_name))
            .ok_or_else(|| MapError::new("NamespaceNotFound", format!("Namespace not found: {ns_name}")))?;
        let svc = self
            .services_in(scope, &ns.id)
            .await?
            .into_iter()
            .find(|s| s.name.eq_ignore_ascii_case(&input.service_name))
            .ok_or_else(|| MapError::new("ServiceNotFound", format!("Service not found: {}", input.service_name)))?;
        let (_, revision) = self
            .records
            .store
            .list_keys(&Self::key(scope, &format!("instances/{}/", svc.id)))
            .await
            .map_err(crate::records::RecordError::Store)?;
        let all = self.instances_of(scope, &svc.id).await?;
        let chosen = discover(
            all,
            &input.query_parameters,
            &input.optional_parameters,
            input.health_status.as_deref(),
            svc.health_check_custom_config.is_some(),
        )?;
        let out: Vec<Value> = chosen
            .iter()
            .take(max)
            .map(|i| {
                json!({
                    "InstanceId": i.id, "NamespaceName": ns.name, "ServiceName": svc.name,
                    "HealthStatus": i.health, "Attributes": i.attributes,
                })
            })
            .collect();
        Ok(json!({ "Instances": out, "InstancesRevision": revision }))
    }
}

/// DiscoverInstances' selection: every QueryParameter must match; OptionalParameters narrow
/// the result only when some instance matches them all; the health filter applies only to
/// services with health checks (HEALTHY by default; HEALTHY_OR_ELSE_ALL fails open).
pub fn discover(
    all: Vec<Instance>,
    query: &BTreeMap<String, String>,
    optional: &BTreeMap<String, String>,
    health: Option<&str>,
    checked: bool,
) -> Result<Vec<Instance>, MapError> {
    let has = |i: &Instance, m: &BTreeMap<String, String>| m.iter().all(|(k, v)| i.attributes.get(k) == Some(v));
    let matching: Vec<Instance> = all.into_iter().filter(|i| has(i, query)).collect();
    let by_health: Vec<Instance> = match (health.unwrap_or("HEALTHY"), checked) {
        (_, false) | ("ALL", _) => matching,
        ("HEALTHY", _) => matching.into_iter().filter(|i| i.health == "HEALTHY").collect(),
        ("UNHEALTHY", _) => matching.into_iter().filter(|i| i.health == "UNHEALTHY").collect(),
        ("HEALTHY_OR_ELSE_ALL", _) => {
            let healthy: Vec<Instance> = matching.iter().filter(|i| i.health == "HEALTHY").cloned().collect();
            if healthy.is_empty() {
                matching
            } else {
                healthy
            }
        }
        (other, _) => {
            return Err(MapError::invalid(format!(
                "HealthStatus {other} is not one of HEALTHY, UNHEALTHY, ALL, HEALTHY_OR_ELSE_ALL."
            )))
        }
    };
    let narrowed: Vec<Instance> = by_health.iter().filter(|i| has(i, optional)).cloned().collect();
    Ok(if narrowed.is_empty() { by_health } else { narrowed })
}
