//! What the load balancer data plane needs, read in one listing of every account's ELBv2
//! records: each listener with its rules and its load balancer's address and attributes, and
//! each target group with its targets and their last health verdicts.

use super::targets::TargetState;
use super::{attributes, store_err, Elb};
use gantry_types::arn::Scope;
use gantry_types::elbv2::{Action, ElbError, Listener, LoadBalancer, Record, RegisteredTarget, Rule, TargetGroup};
use std::collections::BTreeMap;
use std::net::Ipv4Addr;

#[derive(Debug, Clone)]
pub struct ListenerView {
    pub load_balancer: LoadBalancer,
    pub address: Ipv4Addr,
    pub lb_attributes: BTreeMap<String, String>,
    pub listener: Listener,
    /// Non-default rules, lowest priority first.
    pub rules: Vec<Rule>,
    /// HTTPS and TLS listeners: the certificates (the default, then those chosen by SNI),
    /// with their keys.
    pub certificates: Vec<crate::acm::Certificate>,
}

impl ListenerView {
    pub fn lb_attribute(&self, key: &str) -> String {
        let table = attributes::lb_attribute_defaults(&self.load_balancer.kind);
        attributes::value_of(&table, &self.lb_attributes, key).to_string()
    }

    pub fn default_actions(&self) -> &[Action] {
        &self.listener.default_actions
    }
}

#[derive(Debug, Clone)]
pub struct GroupView {
    pub scope: Scope,
    pub group: TargetGroup,
    pub attributes: BTreeMap<String, String>,
    pub targets: Vec<RegisteredTarget>,
    /// Last verdicts by "id:port".
    pub health: BTreeMap<String, TargetState>,
    /// `instance` groups: each node's address by its instance id.
    pub instance_addresses: BTreeMap<String, Ipv4Addr>,
}

impl GroupView {
    /// Where a target is reached: its address (`ip` groups) or its node's (`instance`
    /// groups); None for an instance whose node has no address.
    pub fn target_ip(&self, t: &RegisteredTarget) -> Option<std::net::IpAddr> {
        match t.id.parse::<Ipv4Addr>() {
            Ok(ip) => Some(ip.into()),
            Err(_) => self.instance_addresses.get(&t.id).map(|ip| (*ip).into()),
        }
    }

    pub fn attribute(&self, key: &str) -> String {
        let table = attributes::tg_attribute_defaults(self.group.protocol.as_deref().unwrap_or(""));
        attributes::value_of(&table, &self.attributes, key).to_string()
    }
}

#[derive(Debug, Clone, Default)]
pub struct View {
    pub listeners: Vec<ListenerView>,
    /// By target group ARN.
    pub groups: BTreeMap<String, GroupView>,
    /// The store revision the view was read at (watch from here).
    pub revision: i64,
}

/// Splits `/elbv2/<account>/<region>/<kind>/<rest>`.
fn split(key: &str) -> Option<(Scope, &str, &str)> {
    let mut parts = key.strip_prefix("/elbv2/")?.splitn(4, '/');
    let (account, region, kind, rest) = (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    let scope = Scope {
        account: account.into(),
        region: region.into(),
    };
    Some((scope, kind, rest))
}

fn decode<T: serde::de::DeserializeOwned>(key: &str, value: &[u8]) -> Result<T, ElbError> {
    serde_json::from_slice(value).map_err(|e| ElbError::server(format!("corrupt record {key}: {e}")))
}

impl Elb {
    /// Every load balancer, listener, rule, target group and target, at one revision, and
    /// the certificates listeners serve. Certificates are read first: watching both prefixes
    /// from their revision misses no change (a change read twice costs one more reload).
    pub async fn data_plane_view(&self) -> Result<View, ElbError> {
        let (cert_kvs, revision) = self.store.list(crate::acm::PREFIX).await.map_err(store_err)?;
        let certs: BTreeMap<String, crate::acm::Certificate> = cert_kvs
            .iter()
            .filter_map(|kv| serde_json::from_slice::<crate::acm::Certificate>(&kv.value).ok())
            .map(|c| (c.arn.clone(), c))
            .collect();
        let (kvs, _) = self.store.list("/elbv2/").await.map_err(store_err)?;
        let instance_addresses = self.instance_addresses().await?;
        let mut lbs: BTreeMap<String, Record<LoadBalancer>> = BTreeMap::new();
        let mut listeners: Vec<Record<Listener>> = vec![];
        let mut rules: BTreeMap<String, Vec<Rule>> = BTreeMap::new();
        let mut groups: BTreeMap<(Scope, String), Record<TargetGroup>> = BTreeMap::new();
        let mut targets: BTreeMap<(Scope, String), Vec<RegisteredTarget>> = BTreeMap::new();
        let mut health: BTreeMap<(Scope, String), BTreeMap<String, TargetState>> = BTreeMap::new();
        for kv in &kvs {
            let Some((scope, kind, rest)) = split(&kv.key) else {
                continue;
            };
            match kind {
                "lb" => {
                    let r: Record<LoadBalancer> = decode(&kv.key, &kv.value)?;
                    lbs.insert(r.item.load_balancer_arn.clone(), r);
                }
                "listeners" => {
                    let all: Vec<Record<Listener>> = decode(&kv.key, &kv.value)?;
                    listeners.extend(all);
                }
                "rules" => {
                    let all: Vec<Record<Rule>> = decode(&kv.key, &kv.value)?;
                    rules.insert(
                        rest.to_string(),
                        all.into_iter().map(|r| r.item).filter(|r| !r.is_default).collect(),
                    );
                }
                "tg" => {
                    groups.insert((scope, rest.to_string()), decode(&kv.key, &kv.value)?);
                }
                "targets" => {
                    targets.insert((scope, rest.to_string()), decode(&kv.key, &kv.value)?);
                }
                "health" => {
                    let Some((group, target)) = rest.split_once('/') else {
                        continue;
                    };
                    let state: TargetState = decode(&kv.key, &kv.value)?;
                    health
                        .entry((scope, group.to_string()))
                        .or_default()
                        .insert(target.to_string(), state);
                }
                _ => {}
            }
        }
        let mut view = View {
            revision,
            ..Default::default()
        };
        for rec in listeners {
            let l = rec.item;
            let Some(lb) = lbs.get(&l.load_balancer_arn) else {
                continue;
            };
            let Some(address) = lb.address else { continue };
            let id = l.listener_arn.rsplit('/').next().unwrap_or("").to_string();
            let mut rs = rules.remove(&id).unwrap_or_default();
            rs.sort_by_key(|r| r.priority.parse::<u32>().unwrap_or(u32::MAX));
            let default = l.certificates.iter().map(|c| &c.certificate_arn);
            let certificates = default
                .chain(rec.sni_certificates.iter())
                .filter_map(|arn| certs.get(arn).cloned())
                .collect();
            view.listeners.push(ListenerView {
                load_balancer: lb.item.clone(),
                address,
                lb_attributes: lb.attributes.clone(),
                listener: l,
                rules: rs,
                certificates,
            });
        }
        for ((scope, name), g) in groups {
            let key = (scope.clone(), name);
            view.groups.insert(
                g.item.target_group_arn.clone(),
                GroupView {
                    scope,
                    targets: targets.remove(&key).unwrap_or_default(),
                    health: health.remove(&key).unwrap_or_default(),
                    instance_addresses: if g.item.target_type == "instance" {
                        instance_addresses.clone()
                    } else {
                        BTreeMap::new()
                    },
                    group: g.item,
                    attributes: g.attributes,
                },
            );
        }
        Ok(view)
    }

    /// Every node's address by its instance id (nodes without one are left out).
    pub async fn instance_addresses(&self) -> Result<BTreeMap<String, Ipv4Addr>, ElbError> {
        let (kvs, _) = self.store.list(crate::nodes::NODES_PREFIX).await.map_err(store_err)?;
        Ok(kvs
            .iter()
            .filter_map(|kv| serde_json::from_slice::<crate::nodes::NodeRecord>(&kv.value).ok())
            .filter_map(|n| Some((crate::instances::ec2_instance_id(&n.spec.name), n.spec.address?)))
            .collect())
    }

    /// Records a health checker's verdict on a target (written only when it changes).
    pub async fn record_health(
        &self,
        scope: &Scope,
        group_name: &str,
        target: &str,
        state: &TargetState,
    ) -> Result<(), ElbError> {
        let key = Self::key(scope, &format!("health/{group_name}/{target}"));
        self.update::<TargetState, _>(&key, |_| Ok((Some(state.clone()), ())))
            .await
    }

    /// Forgets every verdict on a group's targets (the group is going away).
    pub(super) async fn forget_group_health(&self, scope: &Scope, group_name: &str) -> Result<(), ElbError> {
        let prefix = Self::key(scope, &format!("health/{group_name}/"));
        let (kvs, _) = self.store.list_keys(&prefix).await.map_err(store_err)?;
        for kv in kvs {
            self.delete_key(&kv.key).await?;
        }
        Ok(())
    }

    /// Forgets the verdict on one target.
    pub async fn forget_health(&self, scope: &Scope, group_name: &str, target: &str) -> Result<(), ElbError> {
        self.delete_key(&Self::key(scope, &format!("health/{group_name}/{target}")))
            .await
    }
}
