//! Cloud Map services: a name in a namespace, the DNS records its instances answer with, and
//! whether their health is reported by someone (custom health checks, which ECS uses).

use super::namespaces::{id_input, valid_dns_name};
use super::{filtered, page, parse, validate_tags, with_token, CloudMap, ListInput, Tagged};
use gantry_types::arn::Scope;
use gantry_types::cloudmap::{DnsConfig, DnsRecord, HealthCheckCustomConfig, MapError, Service, Tag};
use serde::Deserialize;
use serde_json::{json, Value};

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase", deny_unknown_fields)]
struct CreateInput {
    name: String,
    #[serde(default)]
    namespace_id: Option<String>,
    #[serde(default)]
    creator_request_id: Option<String>,
    #[serde(default)]
    description: Option<String>,
    #[serde(default)]
    dns_config: Option<DnsConfig>,
    #[serde(default)]
    health_check_config: Option<Value>,
    #[serde(default)]
    health_check_custom_config: Option<HealthCheckCustomConfig>,
    #[serde(default)]
    tags: Vec<Tag>,
    #[serde(default, rename = "Type")]
    kind: Option<String>,
}

/// Route 53 health checks probe public endpoints from outside; Gantry sends no traffic
/// outside its own networks, so services report health through custom health checks.
fn refuse_route53_checks(config: &Option<Value>) -> Result<(), MapError> {
    match config {
        Some(_) => Err(MapError::invalid(
            "HealthCheckConfig (Route 53 health checks) is not supported by Gantry; use HealthCheckCustomConfig.",
        )),
        None => Ok(()),
    }
}

/// The record sets Cloud Map allows: A, AAAA, SRV in any combination (each once), or one
/// CNAME; CNAME only with WEIGHTED routing; TTLs in range.
pub fn validate_dns_records(records: &[DnsRecord], routing: &str) -> Result<(), MapError> {
    if records.is_empty() {
        return Err(MapError::invalid("DnsRecords must name at least one record."));
    }
    let mut seen = vec![];
    for r in records {
        if !["A", "AAAA", "SRV", "CNAME"].contains(&r.kind.as_str()) {
            return Err(MapError::invalid(format!(
                "Record type {} is not one of A, AAAA, SRV, CNAME.",
                r.kind
            )));
        }
        if seen.contains(&r.kind.as_str()) {
            return Err(MapError::invalid(format!("Record type {} is given twice.", r.kind)));
        }
        if !(0..=2_147_483_647).contains(&r.ttl) {
            return Err(MapError::invalid(format!(
                "TTL {} must be between 0 and 2147483647.",
                r.ttl
            )));
        }
        seen.push(r.kind.as_str());
    }
    if seen.contains(&"CNAME") && (seen.len() > 1 || routing != "WEIGHTED") {
        return Err(MapError::invalid(
            "A CNAME record must be the service's only record, with the WEIGHTED routing policy.",
        ));
    }
    if !["MULTIVALUE", "WEIGHTED"].contains(&routing) {
        return Err(MapError::invalid(format!(
            "RoutingPolicy {routing} is not one of MULTIVALUE, WEIGHTED."
        )));
    }
    Ok(())
}

impl CloudMap {
    fn service_record_key(scope: &Scope, namespace_id: &str, name: &str) -> String {
        Self::key(scope, &format!("services/{namespace_id}/{}", name.to_ascii_lowercase()))
    }

    pub(crate) async fn all_services(&self, scope: &Scope) -> Result<Vec<Tagged<Service>>, MapError> {
        Ok(self.records.list(&Self::key(scope, "services/")).await?)
    }

    pub(crate) async fn services_in(&self, scope: &Scope, namespace_id: &str) -> Result<Vec<Service>, MapError> {
        let prefix = Self::key(scope, &format!("services/{namespace_id}/"));
        let recs: Vec<Tagged<Service>> = self.records.list(&prefix).await?;
        Ok(recs.into_iter().map(|r| r.item).collect())
    }

    /// The service an id or ARN names.
    pub async fn service(&self, scope: &Scope, given: &str) -> Result<Service, MapError> {
        let id = Self::id_of(scope, "service", given);
        self.all_services(scope)
            .await?
            .into_iter()
            .map(|r| r.item)
            .find(|s| s.id == id)
            .ok_or_else(|| MapError::new("ServiceNotFound", format!("Service not found: {id}")))
    }

    pub(crate) async fn service_key(&self, scope: &Scope, id: &str) -> Result<Option<String>, MapError> {
        Ok(self
            .service(scope, id)
            .await
            .ok()
            .map(|s| Self::service_record_key(scope, &s.namespace_id, &s.name)))
    }

    async fn service_json(&self, scope: &Scope, s: &Service) -> Result<Value, MapError> {
        let count = self.instances_of(scope, &s.id).await?.len();
        let mut v = json!(s);
        v["InstanceCount"] = json!(count);
        Ok(v)
    }

    pub async fn create_service(&self, scope: &Scope, input: Value) -> Result<Value, MapError> {
        let input: CreateInput = parse(input)?;
        validate_tags(&input.tags)?;
        refuse_route53_checks(&input.health_check_config)?;
        if !valid_dns_name(&input.name) || input.name.len() > 127 {
            return Err(MapError::invalid(format!("Service name {} is not valid.", input.name)));
        }
        let ns_given = input
            .namespace_id
            .clone()
            .or_else(|| input.dns_config.as_ref().and_then(|d| d.namespace_id.clone()))
            .ok_or_else(|| MapError::invalid("NamespaceId is required."))?;
        let ns = self.namespace(scope, &ns_given).await?;
        let mut dns = input.dns_config.clone();
        if let Some(d) = dns.as_mut() {
            if d.namespace_id.as_deref().is_some_and(|n| n != ns.id) {
                return Err(MapError::invalid("DnsConfig.NamespaceId differs from NamespaceId."));
            }
            if !ns.is_dns() || input.kind.is_some() {
                return Err(MapError::invalid(
                    "DnsConfig is only for services in DNS namespaces, and not with Type HTTP.",
                ));
            }
            let routing = d.routing_policy.get_or_insert_with(|| "MULTIVALUE".into()).clone();
            validate_dns_records(&d.dns_records, &routing)?;
            d.namespace_id = None;
        }
        if let Some(h) = &input.health_check_custom_config {
            if h.failure_threshold.is_some_and(|t| !(1..=10).contains(&t)) {
                return Err(MapError::invalid("FailureThreshold must be between 1 and 10."));
            }
        }
        let id = format!("srv-{}", crate::random_hex(8));
        let svc = Service {
            arn: Self::arn(scope, &format!("service/{id}")),
            id,
            resource_owner: scope.account.clone(),
            name: input.name.clone(),
            namespace_id: ns.id.clone(),
            description: input.description,
            kind: if dns.is_some() { "DNS_HTTP" } else { "HTTP" }.into(),
            dns_config: dns,
            health_check_custom_config: input.health_check_custom_config,
            create_date: self.now(),
            creator_request_id: input.creator_request_id.clone(),
            created_by_account: scope.account.clone(),
        };
        let key = Self::service_record_key(scope, &ns.id, &svc.name);
        let rec = Tagged {
            item: svc.clone(),
            tags: input.tags,
        };
        if !self.records.create(&key, &rec).await? {
            let existing = self.records.load::<Tagged<Service>>(&key).await?.map(|(r, _)| r.item);
            match existing {
                Some(e) if input.creator_request_id.is_some() && e.creator_request_id == input.creator_request_id => {
                    return Ok(json!({ "Service": self.service_json(scope, &e).await? }));
                }
                _ => {
                    return Err(MapError::new(
                        "ServiceAlreadyExists",
                        format!("Service {} already exists in namespace {}.", svc.name, ns.id),
                    ))
                }
            }
        }
        Ok(json!({ "Service": self.service_json(scope, &svc).await? }))
    }

    pub async fn get_service(&self, scope: &Scope, input: Value) -> Result<Value, MapError> {
        let id = id_input(input)?;
        let s = self.service(scope, &id).await?;
        Ok(json!({ "Service": self.service_json(scope, &s).await? }))
    }

    pub async fn list_services(&self, scope: &Scope, input: Value) -> Result<Value, MapError> {
        let input: ListInput = parse(input)?;
        let all: Vec<Service> = self.all_services(scope).await?.into_iter().map(|r| r.item).collect();
        let mut out = filtered(all, &input.filters, |s, name| match name {
            "NAMESPACE_ID" => Some(Some(s.namespace_id.clone())),
            "RESOURCE_OWNER" => Some(Some(s.resource_owner.clone())),
            _ => None,
        })?;
        out.sort_by(|a, b| a.id.cmp(&b.id));
        let (page, next) = page(out, |s| s.id.clone(), &input)?;
        let mut summaries = vec![];
        for s in &page {
            let mut v = self.service_json(scope, s).await?;
            let o = v.as_object_mut().expect("object");
            o.remove("NamespaceId");
            o.remove("CreatorRequestId");
            summaries.push(v);
        }
        Ok(with_token(json!({ "Services": summaries }), next))
    }

    /// The description and the records' TTLs may change; the record types may not.
    pub async fn update_service(&self, scope: &Scope, input: Value) -> Result<Value, MapError> {
        #[derive(Deserialize)]
        #[serde(rename_all = "PascalCase", deny_unknown_fields)]
        struct Input {
            id: String,
            service: Change,
        }
        #[derive(Deserialize)]
        #[serde(rename_all = "PascalCase", deny_unknown_fields)]
        struct Change {
            #[serde(default)]
            description: Option<String>,
            #[serde(default)]
            dns_config: Option<RecordsChange>,
            #[serde(default)]
            health_check_config: Option<Value>,
        }
        #[derive(Deserialize)]
        #[serde(rename_all = "PascalCase", deny_unknown_fields)]
        struct RecordsChange {
            dns_records: Vec<DnsRecord>,
        }
        let input: Input = parse(input)?;
        refuse_route53_checks(&input.service.health_check_config)?;
        let svc = self.service(scope, &input.id).await?;
        let key = Self::service_record_key(scope, &svc.namespace_id, &svc.name);
        let gone = || MapError::new("ServiceNotFound", format!("Service not found: {}", svc.id));
        self.records
            .update::<Tagged<Service>, (), MapError>(&key, |cur| {
                let mut rec = cur.filter(|r| r.item.id == svc.id).ok_or_else(gone)?;
                if let Some(d) = &input.service.description {
                    rec.item.description = Some(d.clone());
                }
                if let Some(change) = &input.service.dns_config {
                    let dns = rec
                        .item
                        .dns_config
                        .as_mut()
                        .ok_or_else(|| MapError::invalid("The service has no DNS configuration to change."))?;
                    let kinds = |rs: &[DnsRecord]| {
                        let mut k: Vec<String> = rs.iter().map(|r| r.kind.clone()).collect();
                        k.sort();
                        k
                    };
                    if kinds(&change.dns_records) != kinds(&dns.dns_records) {
                        return Err(MapError::invalid(
                            "UpdateService may change the records' TTLs, not their types.",
                        ));
                    }
                    validate_dns_records(
                        &change.dns_records,
                        dns.routing_policy.as_deref().unwrap_or("MULTIVALUE"),
                    )?;
                    dns.dns_records = change.dns_records.clone();
                }
                Ok((Some(rec), ()))
            })
            .await?;
        self.operation(scope, "UPDATE_SERVICE", &[("SERVICE", &svc.id)]).await
    }

    pub async fn delete_service(&self, scope: &Scope, input: Value) -> Result<Value, MapError> {
        let id = id_input(input)?;
        let svc = self.service(scope, &id).await?;
        if !self.instances_of(scope, &svc.id).await?.is_empty() {
            return Err(MapError::new(
                "ResourceInUse",
                format!("Service {} has registered instances; deregister them first.", svc.id),
            ));
        }
        self.records
            .delete(&Self::service_record_key(scope, &svc.namespace_id, &svc.name))
            .await?;
        Ok(json!({}))
    }
}

#[cfg(test)]
mod tests {
    use super::validate_dns_records;
    use gantry_types::cloudmap::DnsRecord;

    fn recs(kinds: &[&str]) -> Vec<DnsRecord> {
        kinds
            .iter()
            .map(|k| DnsRecord {
                kind: k.to_string(),
                ttl: 10,
            })
            .collect()
    }

    #[test]
    fn record_sets() {
        for ok in [&["A"][..], &["A", "SRV"], &["A", "AAAA", "SRV"], &["SRV"]] {
            validate_dns_records(&recs(ok), "MULTIVALUE").unwrap();
        }
        validate_dns_records(&recs(&["CNAME"]), "WEIGHTED").unwrap();
        for (bad, policy) in [
            (&[][..], "MULTIVALUE"),
            (&["A", "A"], "MULTIVALUE"),
            (&["MX"], "MULTIVALUE"),
            (&["CNAME"], "MULTIVALUE"),
            (&["CNAME", "A"], "WEIGHTED"),
            (&["A"], "LATENCY"),
        ] {
            assert!(validate_dns_records(&recs(bad), policy).is_err(), "{bad:?} {policy}");
        }
        let mut long = recs(&["A"]);
        long[0].ttl = -1;
        assert!(validate_dns_records(&long, "MULTIVALUE").is_err());
    }
}
