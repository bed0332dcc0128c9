//! What the node resolvers answer: every DNS namespace as a zone, and each DNS service's name
//! with its record types, routing policy and the instances that may be answered (healthy
//! ones, or all for services without health checks). Built from one listing of the store.

use super::Tagged;
use gantry_store::KeyValue;
use gantry_types::cloudmap::{DnsRecord, Instance, Namespace, Service};
use std::collections::BTreeMap;

pub const PREFIX: &str = "/servicediscovery/";

#[derive(Debug, Clone, PartialEq)]
pub struct DnsZone {
    /// Lower case, without the trailing dot.
    pub name: String,
    pub soa_ttl: u32,
}

#[derive(Debug, Clone, PartialEq, Default)]
pub struct DnsName {
    pub records: Vec<DnsRecord>,
    /// WEIGHTED routing answers one instance chosen at random; MULTIVALUE up to eight.
    pub weighted: bool,
    pub instances: Vec<Instance>,
}

#[derive(Debug, Clone, PartialEq, Default)]
pub struct DnsTable {
    pub zones: Vec<DnsZone>,
    /// Fully qualified service names (`web.internal`), lower case, without the trailing dot.
    pub names: BTreeMap<String, DnsName>,
}

impl DnsTable {
    /// The table a listing of `PREFIX` describes. Records that do not parse are skipped (the
    /// API wrote them; a resolver must keep answering the rest).
    pub fn from_listing(kvs: &[KeyValue]) -> DnsTable {
        let mut namespaces: BTreeMap<String, Namespace> = BTreeMap::new();
        let mut services: Vec<Service> = vec![];
        let mut instances: BTreeMap<String, Vec<Instance>> = BTreeMap::new();
        for kv in kvs {
            let parts: Vec<&str> = kv.key.trim_start_matches(PREFIX).split('/').collect();
            match parts.get(2) {
                Some(&"namespaces") => {
                    if let Ok(r) = serde_json::from_slice::<Tagged<Namespace>>(&kv.value) {
                        namespaces.insert(r.item.id.clone(), r.item);
                    }
                }
                Some(&"services") => {
                    if let Ok(r) = serde_json::from_slice::<Tagged<Service>>(&kv.value) {
                        services.push(r.item);
                    }
                }
                Some(&"instances") => {
                    if let (Some(srv), Ok(i)) = (parts.get(3), serde_json::from_slice::<Instance>(&kv.value)) {
                        instances.entry(srv.to_string()).or_default().push(i);
                    }
                }
                _ => {}
            }
        }
        let mut table = DnsTable::default();
        for ns in namespaces.values().filter(|n| n.is_dns()) {
            let ttl = ns.properties.dns_properties.as_ref().map(|d| d.soa.ttl).unwrap_or(15);
            table.zones.push(DnsZone {
                name: ns.name.to_ascii_lowercase(),
                soa_ttl: ttl.clamp(0, u32::MAX as i64) as u32,
            });
        }
        for svc in services {
            let (Some(ns), Some(dns)) = (namespaces.get(&svc.namespace_id), &svc.dns_config) else {
                continue;
            };
            let checked = svc.health_check_custom_config.is_some();
            let answerable = instances
                .remove(&svc.id)
                .unwrap_or_default()
                .into_iter()
                .filter(|i| !checked || i.health == "HEALTHY")
                .collect();
            let fqdn = format!("{}.{}", svc.name, ns.name).to_ascii_lowercase();
            table.names.insert(
                fqdn,
                DnsName {
                    records: dns.dns_records.clone(),
                    weighted: dns.routing_policy.as_deref() == Some("WEIGHTED"),
                    instances: answerable,
                },
            );
        }
        table
    }

    /// The zone a name falls in (the longest namespace it ends with).
    pub fn zone_of(&self, name: &str) -> Option<&DnsZone> {
        self.zones
            .iter()
            .filter(|z| is_within(name, &z.name))
            .max_by_key(|z| z.name.len())
    }
}

/// Whether `name` is `parent` or a name below it (label-wise: `xweb.internal` is not below
/// `web.internal`).
pub fn is_within(name: &str, parent: &str) -> bool {
    name.strip_suffix(parent)
        .is_some_and(|rest| rest.is_empty() || rest.ends_with('.'))
}
