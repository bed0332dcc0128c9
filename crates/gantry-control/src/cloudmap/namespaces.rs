//! Namespaces: private and public DNS namespaces (served by the node resolvers, see `view`)
//! and HTTP namespaces (found through DiscoverInstances only).

use super::{filtered, page, parse, validate_tags, with_token, CloudMap, ListInput, Tagged};
use gantry_types::arn::Scope;
use gantry_types::cloudmap::{DnsProperties, HttpProperties, MapError, Namespace, NamespaceProperties, Soa, Tag};
use serde::Deserialize;
use serde_json::{json, Value};

/// The SOA TTL (how long resolvers cache a "no such name") when the request gives none.
const DEFAULT_SOA_TTL: i64 = 15;

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase", deny_unknown_fields)]
struct CreateInput {
    name: String,
    #[serde(default)]
    creator_request_id: Option<String>,
    #[serde(default)]
    description: Option<String>,
    #[serde(default)]
    tags: Vec<Tag>,
    /// Private DNS namespaces name their VPC; Gantry's node network is the one VPC.
    #[serde(default)]
    vpc: Option<String>,
    #[serde(default)]
    properties: Option<Value>,
}

/// The SOA TTL a create or update's Properties give: `{"DnsProperties": {"SOA": {"TTL": n}}}`.
fn soa_ttl(properties: Option<&Value>, http_only: bool) -> Result<Option<i64>, MapError> {
    let Some(p) = properties else { return Ok(None) };
    if http_only {
        return Err(MapError::invalid("HTTP namespaces have no DNS properties."));
    }
    #[derive(Deserialize)]
    #[serde(rename_all = "PascalCase", deny_unknown_fields)]
    struct Props {
        dns_properties: DnsProps,
    }
    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct DnsProps {
        #[serde(rename = "SOA")]
        soa: Soa,
    }
    let props: Props = parse(p.clone())?;
    let ttl = props.dns_properties.soa.ttl;
    if !(0..=2_147_483_647).contains(&ttl) {
        return Err(MapError::invalid(format!(
            "SOA TTL {ttl} must be between 0 and 2147483647."
        )));
    }
    Ok(Some(ttl))
}

/// A DNS name: dot-separated labels of letters, digits, hyphens and underscores, each 1-63
/// characters and not starting or ending with a hyphen, 253 characters at most.
pub fn valid_dns_name(name: &str) -> bool {
    let name = name.strip_suffix('.').unwrap_or(name);
    !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
}

impl CloudMap {
    fn namespace_record_key(scope: &Scope, name: &str) -> String {
        Self::key(
            scope,
            &format!("namespaces/{}", name.trim_end_matches('.').to_ascii_lowercase()),
        )
    }

    /// Every namespace of the account and region.
    pub(crate) async fn namespaces(&self, scope: &Scope) -> Result<Vec<Tagged<Namespace>>, MapError> {
        Ok(self.records.list(&Self::key(scope, "namespaces/")).await?)
    }

    /// The namespace an id or ARN names.
    pub(crate) async fn namespace(&self, scope: &Scope, given: &str) -> Result<Namespace, MapError> {
        let id = Self::id_of(scope, "namespace", given);
        self.namespaces(scope)
            .await?
            .into_iter()
            .map(|r| r.item)
            .find(|n| n.id == id)
            .ok_or_else(|| MapError::new("NamespaceNotFound", format!("Namespace not found: {id}")))
    }

    /// The namespace a name, id or ARN names.
    pub async fn namespace_named(&self, scope: &Scope, given: &str) -> Result<Namespace, MapError> {
        let key = Self::namespace_record_key(scope, given);
        match self.records.load::<Tagged<Namespace>>(&key).await? {
            Some((r, _)) => Ok(r.item),
            None => self.namespace(scope, given).await,
        }
    }

    /// The store key of the namespace with this id, if there is one.
    pub(crate) async fn namespace_key(&self, scope: &Scope, id: &str) -> Result<Option<String>, MapError> {
        Ok(self
            .namespace(scope, id)
            .await
            .ok()
            .map(|n| Self::namespace_record_key(scope, &n.name)))
    }

    pub async fn create_namespace(&self, scope: &Scope, kind: &str, input: Value) -> Result<Value, MapError> {
        let input: CreateInput = parse(input)?;
        validate_tags(&input.tags)?;
        let http = kind == "HTTP";
        match (kind, &input.vpc) {
            ("DNS_PRIVATE", None) => return Err(MapError::invalid("Vpc is required for a private DNS namespace.")),
            // Gantry has one VPC, the default one EC2 describes.
            ("DNS_PRIVATE", Some(v)) if *v != crate::ec2::vpc_id(scope) => {
                return Err(MapError::invalid(format!("The VPC {v} does not exist.")))
            }
            ("DNS_PRIVATE", Some(_)) | (_, None) => {}
            (_, Some(_)) => return Err(MapError::invalid("Vpc is only for private DNS namespaces.")),
        }
        if !http && !valid_dns_name(&input.name) {
            return Err(MapError::invalid(format!(
                "Namespace name {} is not a valid DNS name.",
                input.name
            )));
        }
        if input.name.starts_with("arn:") || input.name.is_empty() {
            return Err(MapError::invalid(format!(
                "Namespace name {} is not valid.",
                input.name
            )));
        }
        let ttl = soa_ttl(input.properties.as_ref(), http)?.unwrap_or(DEFAULT_SOA_TTL);
        let name = input.name.trim_end_matches('.').to_string();
        let id = format!("ns-{}", crate::random_hex(8));
        let dns_properties = (!http).then(|| DnsProperties {
            hosted_zone_id: format!("Z{}", crate::random_hex(7).to_ascii_uppercase()),
            soa: Soa { ttl },
        });
        let ns = Namespace {
            arn: Self::arn(scope, &format!("namespace/{id}")),
            id,
            resource_owner: scope.account.clone(),
            name: name.clone(),
            kind: kind.into(),
            description: input.description,
            properties: NamespaceProperties {
                dns_properties,
                http_properties: Some(HttpProperties {
                    http_name: name.clone(),
                }),
            },
            create_date: self.now(),
            creator_request_id: input.creator_request_id.clone(),
        };
        let key = Self::namespace_record_key(scope, &name);
        let record = Tagged {
            item: ns.clone(),
            tags: input.tags,
        };
        let ns = if self.records.create(&key, &record).await? {
            ns
        } else {
            // A retry of the same request (same CreatorRequestId) succeeds again.
            let (existing, _) = self
                .records
                .load::<Tagged<Namespace>>(&key)
                .await?
                .ok_or_else(|| MapError::server("namespace vanished during create"))?;
            if input.creator_request_id.is_none() || existing.item.creator_request_id != input.creator_request_id {
                return Err(MapError::new(
                    "NamespaceAlreadyExists",
                    format!("Namespace {name} already exists: {}", existing.item.id),
                ));
            }
            existing.item
        };
        self.operation(scope, "CREATE_NAMESPACE", &[("NAMESPACE", &ns.id)])
            .await
    }

    async fn namespace_json(&self, scope: &Scope, ns: &Namespace) -> Result<Value, MapError> {
        let services = self.services_in(scope, &ns.id).await?.len();
        let mut v = json!(ns);
        v["ServiceCount"] = json!(services);
        Ok(v)
    }

    pub async fn get_namespace(&self, scope: &Scope, input: Value) -> Result<Value, MapError> {
        let id = id_input(input)?;
        let ns = self.namespace(scope, &id).await?;
        Ok(json!({ "Namespace": self.namespace_json(scope, &ns).await? }))
    }

    pub async fn list_namespaces(&self, scope: &Scope, input: Value) -> Result<Value, MapError> {
        let input: ListInput = parse(input)?;
        let all: Vec<Namespace> = self.namespaces(scope).await?.into_iter().map(|r| r.item).collect();
        let mut out = filtered(all, &input.filters, |ns, name| match name {
            "TYPE" => Some(Some(ns.kind.clone())),
            "NAME" | "HTTP_NAME" => Some(Some(ns.name.clone())),
            "RESOURCE_OWNER" => Some(Some(ns.resource_owner.clone())),
            _ => None,
        })?;
        out.sort_by(|a, b| a.id.cmp(&b.id));
        let (page, next) = page(out, |n| n.id.clone(), &input)?;
        let mut summaries = vec![];
        for ns in &page {
            let mut v = self.namespace_json(scope, ns).await?;
            v.as_object_mut().expect("object").remove("CreatorRequestId");
            summaries.push(v);
        }
        Ok(with_token(json!({ "Namespaces": summaries }), next))
    }

    pub async fn delete_namespace(&self, scope: &Scope, input: Value) -> Result<Value, MapError> {
        let id = id_input(input)?;
        let ns = self.namespace(scope, &id).await?;
        if !self.services_in(scope, &ns.id).await?.is_empty() {
            return Err(MapError::new(
                "ResourceInUse",
                format!("Namespace {} has associated services; delete them first.", ns.id),
            ));
        }
        self.records
            .delete(&Self::namespace_record_key(scope, &ns.name))
            .await?;
        self.operation(scope, "DELETE_NAMESPACE", &[("NAMESPACE", &ns.id)])
            .await
    }

    /// UpdateHttp/PrivateDns/PublicDnsNamespace: the description, and the SOA TTL of DNS ones.
    pub async fn update_namespace(&self, scope: &Scope, kind: &str, input: Value) -> Result<Value, MapError> {
        #[derive(Deserialize)]
        #[serde(rename_all = "PascalCase", deny_unknown_fields)]
        struct Input {
            id: String,
            #[serde(default)]
            updater_request_id: Option<String>,
            namespace: Change,
        }
        #[derive(Deserialize)]
        #[serde(rename_all = "PascalCase", deny_unknown_fields)]
        struct Change {
            #[serde(default)]
            description: Option<String>,
            #[serde(default)]
            properties: Option<Value>,
        }
        let input: Input = parse(input)?;
        let _ = input.updater_request_id;
        let ns = self.namespace(scope, &input.id).await?;
        if ns.kind != kind {
            return Err(MapError::invalid(format!(
                "Namespace {} is of type {}, not {kind}.",
                ns.id, ns.kind
            )));
        }
        let ttl = soa_ttl(input.namespace.properties.as_ref(), kind == "HTTP")?;
        let key = Self::namespace_record_key(scope, &ns.name);
        let gone = || MapError::new("NamespaceNotFound", format!("Namespace not found: {}", ns.id));
        self.records
            .update::<Tagged<Namespace>, (), MapError>(&key, |cur| {
                let mut rec = cur.filter(|r| r.item.id == ns.id).ok_or_else(gone)?;
                if let Some(d) = &input.namespace.description {
                    rec.item.description = Some(d.clone());
                }
                if let (Some(ttl), Some(dns)) = (ttl, rec.item.properties.dns_properties.as_mut()) {
                    dns.soa.ttl = ttl;
                }
                Ok((Some(rec), ()))
            })
            .await?;
        self.operation(scope, "UPDATE_NAMESPACE", &[("NAMESPACE", &ns.id)])
            .await
    }
}

/// `{"Id": ...}` inputs.
pub(super) fn id_input(input: Value) -> Result<String, MapError> {
    #[derive(Deserialize)]
    #[serde(rename_all = "PascalCase", deny_unknown_fields)]
    struct Input {
        id: String,
    }
    Ok(parse::<Input>(input)?.id)
}

#[cfg(test)]
mod tests {
    use super::valid_dns_name;

    #[test]
    fn dns_names() {
        for ok in ["internal", "svc.local", "a-b.c_d.example.", "x"] {
            assert!(valid_dns_name(ok), "{ok}");
        }
        let long_label = "a".repeat(64);
        for bad in ["", ".", "a..b", "-a.b", "a-.b", "a b", "a/b", long_label.as_str()] {
            assert!(!valid_dns_name(bad), "{bad:?}");
        }
        assert!(!valid_dns_name(&"a.".repeat(128)));
    }
}
