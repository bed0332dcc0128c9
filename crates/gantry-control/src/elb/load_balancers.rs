//! CreateLoadBalancer, DescribeLoadBalancers, DeleteLoadBalancer and the load balancer's
//! attributes.

use super::{attributes, page, parse, validate_tags, Elb, Named, TagEdit};
use gantry_types::arn::Scope;
use gantry_types::elbv2::{AvailabilityZone, ElbError, Listener, LoadBalancer, LoadBalancerState, Record, Tag};
use serde::Deserialize;
use serde_json::{json, Value};

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase", deny_unknown_fields)]
struct CreateInput {
    name: String,
    #[serde(default)]
    subnets: Vec<String>,
    #[serde(default)]
    subnet_mappings: Vec<SubnetMapping>,
    #[serde(default)]
    security_groups: Vec<String>,
    #[serde(default)]
    scheme: Option<String>,
    #[serde(default)]
    tags: Vec<Tag>,
    #[serde(default, rename = "Type")]
    kind: Option<String>,
    #[serde(default)]
    ip_address_type: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase", deny_unknown_fields)]
struct SubnetMapping {
    subnet_id: String,
}

/// ELBv2's name rule: 1-32 alphanumerics and hyphens, no hyphen at either end, and not
/// beginning with "internal-".
pub(super) fn validate_name(what: &str, name: &str) -> Result<(), ElbError> {
    if name.is_empty() || name.len() > 32 {
        return Err(ElbError::validation(format!(
            "{what} name '{name}' must be between 1 and 32 characters."
        )));
    }
    if !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') || name.starts_with('-') || name.ends_with('-') {
        return Err(ElbError::validation(format!(
            "{what} name '{name}' can contain only alphanumeric characters and hyphens, and cannot begin or end with a hyphen."
        )));
    }
    if what == "Load balancer" && name.starts_with("internal-") {
        return Err(ElbError::validation(
            "Load balancer names cannot begin with 'internal-'.",
        ));
    }
    Ok(())
}

/// The default VPC a load balancer is placed in, as EC2 describes it: its id, its subnets
/// (one per node network) with their zones, and its security groups' ids.
pub struct Vpc {
    pub id: String,
    pub subnets: Vec<(String, String)>,
    pub groups: Vec<String>,
}

impl Vpc {
    /// The zones of a load balancer's subnets: each must be the VPC's, at most one per zone,
    /// and at least one (ELBv2 asks two zones of an application load balancer; a one-node
    /// Gantry has one).
    fn zones_of(&self, subnets: &[String]) -> Result<Vec<AvailabilityZone>, ElbError> {
        if subnets.is_empty() {
            return Err(ElbError::validation("At least one subnet must be specified"));
        }
        let mut zones: Vec<AvailabilityZone> = Vec::with_capacity(subnets.len());
        for id in subnets {
            let Some((_, zone)) = self.subnets.iter().find(|(s, _)| s == id) else {
                return Err(ElbError::new(
                    "SubnetNotFoundException",
                    format!("The subnet ID '{id}' is not valid"),
                ));
            };
            if zones.iter().any(|z| z.zone_name.as_deref() == Some(zone.as_str())) {
                return Err(ElbError::invalid_config(
                    "A load balancer cannot be attached to multiple subnets in the same Availability Zone",
                ));
            }
            zones.push(AvailabilityZone {
                zone_name: Some(zone.clone()),
                subnet_id: id.clone(),
            });
        }
        Ok(zones)
    }

    fn check_groups(&self, groups: &[String]) -> Result<(), ElbError> {
        match groups.iter().find(|g| !self.groups.contains(g)) {
            Some(g) => Err(ElbError::new(
                "InvalidSecurityGroupException",
                format!("One or more security groups are invalid: '{g}' does not exist"),
            )),
            None => Ok(()),
        }
    }
}

fn kind_code(kind: &str) -> &'static str {
    if kind == "network" {
        "net"
    } else {
        "app"
    }
}

impl Elb {
    fn lb_key(scope: &Scope, name: &str) -> String {
        Self::key(scope, &format!("lb/{name}"))
    }

    pub async fn create_load_balancer(&self, scope: &Scope, input: Value, vpc: &Vpc) -> Result<Value, ElbError> {
        let input: CreateInput = parse(input)?;
        validate_name("Load balancer", &input.name)?;
        validate_tags(&input.tags)?;
        let kind = input.kind.unwrap_or_else(|| "application".into());
        if kind == "gateway" {
            return Err(ElbError::validation(
                "Gateway Load Balancers are not supported by Gantry.",
            ));
        }
        if input.ip_address_type.as_deref().is_some_and(|t| t != "ipv4") {
            return Err(ElbError::validation(
                "Gantry load balancers serve IPv4 only: IpAddressType must be 'ipv4'.",
            ));
        }
        if kind == "network" && !input.security_groups.is_empty() {
            return Err(ElbError::validation(
                "Security groups cannot be set on a network load balancer in Gantry.",
            ));
        }
        let mut subnets = input.subnets;
        subnets.extend(input.subnet_mappings.into_iter().map(|m| m.subnet_id));
        let availability_zones = vpc.zones_of(&subnets)?;
        vpc.check_groups(&input.security_groups)?;
        let id = Self::new_id();
        let lb = LoadBalancer {
            load_balancer_arn: Self::arn(scope, &format!("loadbalancer/{}/{}/{id}", kind_code(&kind), input.name)),
            dns_name: dns_name(scope, &input.name, &id),
            canonical_hosted_zone_id: "Z0GANTRYELB".into(),
            created_time: self.now(),
            load_balancer_name: input.name.clone(),
            scheme: input.scheme.unwrap_or_else(|| "internet-facing".into()),
            vpc_id: Some(vpc.id.clone()),
            state: LoadBalancerState {
                code: "active".into(),
                reason: None,
            },
            kind,
            availability_zones,
            security_groups: input.security_groups,
            ip_address_type: "ipv4".into(),
        };
        let key = Self::lb_key(scope, &input.name);
        if let Some((existing, _)) = self.load::<Record<LoadBalancer>>(&key).await? {
            // Creating the same load balancer again succeeds, as in ELBv2.
            let same = existing.item.kind == lb.kind && existing.item.scheme == lb.scheme;
            if !same {
                return Err(ElbError::new(
                    "DuplicateLoadBalancerNameException",
                    format!("A load balancer with the name '{}' already exists.", input.name),
                ));
            }
            return Ok(json!({"LoadBalancers": [existing.item]}));
        }
        let address = self.take_address(&lb.load_balancer_arn).await?;
        let mut record = Record::new(lb.clone(), input.tags);
        record.address = Some(address);
        if !self.create(&key, &record).await? {
            // Another create of the same name won the race: give the address back.
            self.delete_key(&Self::address_key(address)).await?;
            return Err(ElbError::new(
                "DuplicateLoadBalancerNameException",
                format!("A load balancer with the name '{}' already exists.", input.name),
            ));
        }
        Ok(json!({"LoadBalancers": [lb]}))
    }

    /// The load balancer an ARN names, with its store revision.
    pub(super) async fn find_lb(&self, scope: &Scope, arn: &str) -> Result<(Record<LoadBalancer>, i64), ElbError> {
        let not_found = || lb_not_found(arn);
        let Some(Named::LoadBalancer { name, .. }) = Self::parse_arn(scope, arn) else {
            return Err(not_found());
        };
        match self.load::<Record<LoadBalancer>>(&Self::lb_key(scope, &name)).await? {
            Some((r, rev)) if r.item.load_balancer_arn == arn => Ok((r, rev)),
            _ => Err(not_found()),
        }
    }

    pub async fn describe_load_balancers(&self, scope: &Scope, input: Value) -> Result<Value, ElbError> {
        #[derive(Deserialize)]
        #[serde(rename_all = "PascalCase", deny_unknown_fields)]
        struct Input {
            #[serde(default)]
            load_balancer_arns: Option<Vec<String>>,
            #[serde(default)]
            names: Option<Vec<String>>,
            #[serde(default)]
            marker: Option<String>,
            #[serde(default)]
            page_size: Option<i64>,
        }
        let input: Input = parse(input)?;
        if input.load_balancer_arns.is_some() && input.names.is_some() {
            return Err(ElbError::validation(
                "Load balancer names and load balancer ARNs cannot be specified at the same time",
            ));
        }
        let mut found = vec![];
        if let Some(arns) = &input.load_balancer_arns {
            for arn in arns {
                found.push(self.find_lb(scope, arn).await?.0.item);
            }
        } else if let Some(names) = &input.names {
            let not_found = |n: &str| {
                ElbError::new(
                    "LoadBalancerNotFoundException",
                    format!("Load balancers '[{n}]' not found"),
                )
            };
            let recs: Vec<Record<LoadBalancer>> = self.by_names(scope, "lb", names, not_found).await?;
            found = recs.into_iter().map(|r| r.item).collect();
        } else {
            let all: Vec<Record<LoadBalancer>> = self.list(&Self::key(scope, "lb/")).await?;
            found = all.into_iter().map(|r| r.item).collect();
        }
        let (items, next) = page(
            found,
            |l| l.load_balancer_name.clone(),
            input.marker.as_deref(),
            input.page_size,
        );
        Ok(json!({"LoadBalancers": items, "NextMarker": next}))
    }

    /// Replaces an application load balancer's security groups (each must exist in the VPC).
    pub async fn set_security_groups(&self, scope: &Scope, input: Value, vpc: &Vpc) -> Result<Value, ElbError> {
        #[derive(Deserialize)]
        #[serde(rename_all = "PascalCase", deny_unknown_fields)]
        struct Input {
            load_balancer_arn: String,
            security_groups: Vec<String>,
            #[serde(default)]
            enforce_security_group_inbound_rules_on_private_link_traffic: Option<String>,
        }
        let input: Input = parse(input)?;
        let (lb, _) = self.find_lb(scope, &input.load_balancer_arn).await?;
        let invalid = |m: &str| ElbError::new("InvalidConfigurationRequestException", m.to_string());
        if lb.item.kind == "network" {
            return Err(invalid(
                "Security groups cannot be set on a network load balancer in Gantry.",
            ));
        }
        if input
            .enforce_security_group_inbound_rules_on_private_link_traffic
            .is_some()
        {
            return Err(invalid(
                "EnforceSecurityGroupInboundRulesOnPrivateLinkTraffic applies only to network load balancers.",
            ));
        }
        if input.security_groups.is_empty() {
            return Err(invalid(
                "An application load balancer must have at least one security group.",
            ));
        }
        vpc.check_groups(&input.security_groups)?;
        let key = Self::lb_key(scope, &lb.item.load_balancer_name);
        let arn = input.load_balancer_arn;
        let groups = input.security_groups;
        self.edit::<Record<LoadBalancer>, _>(
            &key,
            |r| r.item.load_balancer_arn == arn,
            || lb_not_found(&arn),
            |r| {
                r.item.security_groups = groups.clone();
                Ok(())
            },
        )
        .await?;
        Ok(json!({"SecurityGroupIds": groups}))
    }

    /// Whether any load balancer of the scope is in security group `id` (EC2 then refuses to
    /// delete the group).
    pub async fn load_balancers_in_group(&self, scope: &Scope, id: &str) -> Result<bool, ElbError> {
        let all: Vec<Record<LoadBalancer>> = self.list(&Self::key(scope, "lb/")).await?;
        Ok(all.iter().any(|r| r.item.security_groups.iter().any(|g| g == id)))
    }

    pub async fn delete_load_balancer(&self, scope: &Scope, input: Value) -> Result<Value, ElbError> {
        #[derive(Deserialize)]
        #[serde(rename_all = "PascalCase", deny_unknown_fields)]
        struct Input {
            load_balancer_arn: String,
        }
        let input: Input = parse(input)?;
        let (lb, _) = match self.find_lb(scope, &input.load_balancer_arn).await {
            Ok(found) => found,
            // Deleting a load balancer that is already gone succeeds, as in ELBv2.
            Err(e) if e.shape == "LoadBalancerNotFoundException" => return Ok(json!({})),
            Err(e) => return Err(e),
        };
        if lb.attributes.get("deletion_protection.enabled").map(String::as_str) == Some("true") {
            return Err(ElbError::new(
                "OperationNotPermittedException",
                format!(
                    "Load balancer '{}' cannot be deleted because deletion protection is enabled",
                    input.load_balancer_arn
                ),
            ));
        }
        let lb_id = lb_id(&lb.item);
        let listeners: Vec<Record<Listener>> = self
            .load(&Self::listeners_key(scope, &lb_id))
            .await?
            .map(|(l, _)| l)
            .unwrap_or_default();
        for l in &listeners {
            self.delete_key(&Self::rules_key(scope, &listener_id(&l.item.listener_arn)))
                .await?;
        }
        self.delete_key(&Self::listeners_key(scope, &lb_id)).await?;
        self.delete_key(&Self::lb_key(scope, &lb.item.load_balancer_name))
            .await?;
        Ok(json!({}))
    }

    pub async fn describe_load_balancer_attributes(&self, scope: &Scope, input: Value) -> Result<Value, ElbError> {
        let arn = arn_member(&input, "LoadBalancerArn")?;
        let (lb, _) = self.find_lb(scope, &arn).await?;
        Ok(
            json!({"Attributes": attributes::described(&attributes::lb_attribute_defaults(&lb.item.kind), &lb.attributes)}),
        )
    }

    pub async fn modify_load_balancer_attributes(&self, scope: &Scope, input: Value) -> Result<Value, ElbError> {
        let arn = arn_member(&input, "LoadBalancerArn")?;
        let changes = attributes::parse_changes(&input)?;
        let (lb, _) = self.find_lb(scope, &arn).await?;
        let defaults = attributes::lb_attribute_defaults(&lb.item.kind);
        for (k, v) in &changes {
            attributes::check_lb(&defaults, k, v)?;
        }
        let key = Self::lb_key(scope, &lb.item.load_balancer_name);
        let attrs = self
            .edit::<Record<LoadBalancer>, _>(
                &key,
                |r| r.item.load_balancer_arn == arn,
                || lb_not_found(&arn),
                |r| {
                    attributes::apply(&defaults, &mut r.attributes, &changes);
                    Ok(r.attributes.clone())
                },
            )
            .await?;
        Ok(json!({"Attributes": attributes::described(&defaults, &attrs)}))
    }

    /// Addresses are taken across accounts: they share the host.
    fn address_key(ip: std::net::Ipv4Addr) -> String {
        format!("/elbv2-addresses/{ip}")
    }

    /// The lowest free address of the network, taken with an atomic create.
    async fn take_address(&self, owner: &str) -> Result<std::net::Ipv4Addr, ElbError> {
        let (taken, _) = self
            .store
            .list_keys("/elbv2-addresses/")
            .await
            .map_err(super::store_err)?;
        let taken: std::collections::BTreeSet<&str> = taken.iter().filter_map(|kv| kv.key.rsplit('/').next()).collect();
        for ip in self.network.hosts() {
            if taken.contains(ip.to_string().as_str()) {
                continue;
            }
            if self.create(&Self::address_key(ip), &owner).await? {
                return Ok(ip);
            }
        }
        Err(ElbError::new(
            "TooManyLoadBalancersException",
            format!("No address is left for another load balancer in {}", self.network),
        ))
    }

    pub(super) async fn lb_tags(&self, scope: &Scope, arn: &str, edit: TagEdit<'_>) -> Result<Vec<Tag>, ElbError> {
        let (lb, _) = self.find_lb(scope, arn).await?;
        let key = Self::lb_key(scope, &lb.item.load_balancer_name);
        self.edit::<Record<LoadBalancer>, _>(
            &key,
            |r| r.item.load_balancer_arn == arn,
            || lb_not_found(arn),
            |r| {
                r.tags = edit(&r.tags)?;
                Ok(r.tags.clone())
            },
        )
        .await
    }
}

fn lb_not_found(arn: &str) -> ElbError {
    ElbError::new(
        "LoadBalancerNotFoundException",
        format!("Load balancer '{arn}' not found"),
    )
}

/// `<name>-<id>.<region>.elb.localhost`: a name the host resolves to the load balancer's
/// address once the data plane serves it.
fn dns_name(scope: &Scope, name: &str, id: &str) -> String {
    format!("{name}-{id}.{}.elb.localhost", scope.region)
}

/// The id part of a load balancer's ARN (its last segment).
pub(super) fn lb_id(lb: &LoadBalancer) -> String {
    lb.load_balancer_arn.rsplit('/').next().unwrap_or("").to_string()
}

pub(super) fn listener_id(arn: &str) -> String {
    arn.rsplit('/').next().unwrap_or("").to_string()
}

/// A required ARN member of a request.
pub(super) fn arn_member(input: &Value, name: &str) -> Result<String, ElbError> {
    input
        .get(name)
        .and_then(Value::as_str)
        .map(str::to_string)
        .ok_or_else(|| ElbError::validation(format!("{name} is required.")))
}
