//! Target groups: create (idempotent for the same settings), describe, modify the health
//! check, delete (refused while a listener or rule forwards to the group), attributes.

use super::load_balancers::{arn_member, validate_name};
use super::{attributes, only, page, parse, validate_tags, Elb, Named, TagEdit};
use gantry_types::arn::Scope;
use gantry_types::elbv2::{ElbError, Matcher, Record, Tag, TargetGroup};
use serde::Deserialize;
use serde_json::{json, Value};

/// The health check members CreateTargetGroup and ModifyTargetGroup share.
#[derive(Deserialize, Default)]
#[serde(rename_all = "PascalCase")]
struct HealthCheck {
    #[serde(default)]
    health_check_enabled: Option<bool>,
    #[serde(default)]
    health_check_interval_seconds: Option<i64>,
    #[serde(default)]
    health_check_path: Option<String>,
    #[serde(default)]
    health_check_port: Option<String>,
    #[serde(default)]
    health_check_protocol: Option<String>,
    #[serde(default)]
    health_check_timeout_seconds: Option<i64>,
    #[serde(default)]
    healthy_threshold_count: Option<i64>,
    #[serde(default)]
    unhealthy_threshold_count: Option<i64>,
    #[serde(default)]
    matcher: Option<Matcher>,
}

/// CreateTargetGroup's members Gantry implements (the health check's are flattened in, which
/// serde cannot combine with deny_unknown_fields, hence the explicit list).
const CREATE_MEMBERS: &[&str] = &[
    "Name",
    "Protocol",
    "ProtocolVersion",
    "Port",
    "VpcId",
    "TargetType",
    "Tags",
    "IpAddressType",
    "HealthCheckEnabled",
    "HealthCheckIntervalSeconds",
    "HealthCheckPath",
    "HealthCheckPort",
    "HealthCheckProtocol",
    "HealthCheckTimeoutSeconds",
    "HealthyThresholdCount",
    "UnhealthyThresholdCount",
    "Matcher",
];

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct CreateInput {
    name: String,
    #[serde(default)]
    protocol: Option<String>,
    #[serde(default)]
    protocol_version: Option<String>,
    #[serde(default)]
    port: Option<i64>,
    #[serde(default)]
    vpc_id: Option<String>,
    #[serde(default)]
    target_type: Option<String>,
    #[serde(default)]
    tags: Vec<Tag>,
    #[serde(default)]
    ip_address_type: Option<String>,
    #[serde(flatten)]
    health: HealthCheck,
}

fn is_layer4(protocol: &str) -> bool {
    matches!(protocol, "TCP" | "TLS" | "UDP" | "TCP_UDP")
}

/// The protocol and port of a new group, checked against what the data plane serves.
fn check_protocol(input: &CreateInput) -> Result<(String, i64, String), ElbError> {
    // `ip` targets are task addresses (awsvpc); `instance` targets are nodes, reached at the
    // host ports bridge-mode tasks publish there (ELBv2's default).
    let target_type = input.target_type.clone().unwrap_or_else(|| "instance".into());
    if target_type != "ip" && target_type != "instance" {
        return Err(ElbError::validation(format!(
            "Target type '{target_type}' is not supported by Gantry: use 'ip' (task addresses) or 'instance' (nodes' host ports)."
        )));
    }
    let protocol = input.protocol.clone().ok_or_else(|| {
        ElbError::validation("A protocol must be specified for target groups of type 'ip' or 'instance'")
    })?;
    if !matches!(protocol.as_str(), "HTTP" | "TCP") {
        // ELBv2 declares no UnsupportedProtocol for target groups: their configuration errors
        // are InvalidConfigurationRequest.
        return Err(ElbError::new(
            "InvalidConfigurationRequestException",
            format!("Protocol '{protocol}' is not supported by Gantry target groups: use HTTP or TCP."),
        ));
    }
    let port = input
        .port
        .ok_or_else(|| ElbError::validation("A port must be specified for target groups of type 'ip' or 'instance'"))?;
    if let Some(v) = input.protocol_version.as_deref().filter(|v| *v != "HTTP1") {
        return Err(ElbError::validation(format!(
            "Protocol version '{v}' is not supported by Gantry: use HTTP1."
        )));
    }
    if input.ip_address_type.as_deref().is_some_and(|t| t != "ipv4") {
        return Err(ElbError::validation("Gantry target groups hold IPv4 targets only."));
    }
    Ok((protocol, port, target_type))
}

/// A target group's VPC: Gantry's one (the default VPC), also when the request names none.
fn in_vpc(scope: &Scope, asked: Option<&str>) -> Result<String, ElbError> {
    let vpc = crate::ec2::vpc_id(scope);
    match asked {
        Some(v) if v != vpc => Err(ElbError::invalid_config(format!("The VPC ID '{v}' is not found"))),
        _ => Ok(vpc),
    }
}

/// A new group with ELBv2's health check defaults for its protocol.
fn with_defaults(scope: &Scope, input: &CreateInput, id: &str) -> Result<TargetGroup, ElbError> {
    let (protocol, port, target_type) = check_protocol(input)?;
    let l4 = is_layer4(&protocol);
    let mut tg = TargetGroup {
        target_group_arn: Elb::arn(scope, &format!("targetgroup/{}/{id}", input.name)),
        target_group_name: input.name.clone(),
        protocol: Some(protocol.clone()),
        port: Some(port),
        vpc_id: Some(in_vpc(scope, input.vpc_id.as_deref())?),
        health_check_protocol: if l4 { "TCP".into() } else { protocol.clone() },
        health_check_port: "traffic-port".into(),
        health_check_enabled: true,
        health_check_interval_seconds: 30,
        health_check_timeout_seconds: if l4 { 10 } else { 5 },
        healthy_threshold_count: 5,
        unhealthy_threshold_count: 2,
        health_check_path: (!l4).then(|| "/".into()),
        matcher: (!l4).then(|| Matcher {
            http_code: Some("200".into()),
            grpc_code: None,
        }),
        load_balancer_arns: vec![],
        target_type,
        protocol_version: (!l4).then(|| "HTTP1".into()),
        ip_address_type: "ipv4".into(),
    };
    apply_health(&mut tg, &input.health)?;
    Ok(tg)
}

/// Applies and checks health check settings as ELBv2 bounds them.
fn apply_health(tg: &mut TargetGroup, h: &HealthCheck) -> Result<(), ElbError> {
    let bad = |m: String| Err(ElbError::validation(m));
    if let Some(p) = &h.health_check_protocol {
        if !matches!(p.as_str(), "HTTP" | "TCP") {
            return Err(ElbError::new(
                "InvalidConfigurationRequestException",
                format!("Health check protocol '{p}' is not supported by Gantry: use HTTP or TCP."),
            ));
        }
        if tg.protocol.as_deref() == Some("HTTP") && p == "TCP" {
            return bad("Health check protocol TCP is not supported for target groups with the HTTP protocol".into());
        }
        tg.health_check_protocol = p.clone();
        if p == "HTTP" && tg.health_check_path.is_none() {
            tg.health_check_path = Some("/".into());
            tg.matcher = Some(Matcher {
                http_code: Some("200-399".into()),
                grpc_code: None,
            });
        }
    }
    let http = tg.health_check_protocol == "HTTP";
    if let Some(v) = h.health_check_enabled {
        tg.health_check_enabled = v;
    }
    if let Some(v) = h.health_check_interval_seconds {
        if !(5..=300).contains(&v) {
            return bad(format!("Health check interval '{v}' must be between 5 and 300 seconds"));
        }
        tg.health_check_interval_seconds = v;
    }
    if let Some(v) = h.health_check_timeout_seconds {
        if !(2..=120).contains(&v) {
            return bad(format!("Health check timeout '{v}' must be between 2 and 120 seconds"));
        }
        tg.health_check_timeout_seconds = v;
    }
    if tg.health_check_timeout_seconds >= tg.health_check_interval_seconds {
        return bad("Health check timeout must be smaller than the interval".into());
    }
    for (v, what) in [
        (h.healthy_threshold_count, "Healthy"),
        (h.unhealthy_threshold_count, "Unhealthy"),
    ] {
        if let Some(v) = v.filter(|v| !(2..=10).contains(v)) {
            return bad(format!("{what} threshold count '{v}' must be between 2 and 10"));
        }
    }
    tg.healthy_threshold_count = h.healthy_threshold_count.unwrap_or(tg.healthy_threshold_count);
    tg.unhealthy_threshold_count = h.unhealthy_threshold_count.unwrap_or(tg.unhealthy_threshold_count);
    if let Some(port) = &h.health_check_port {
        let ok = port == "traffic-port" || port.parse::<u16>().is_ok_and(|p| p >= 1);
        if !ok {
            return bad(format!(
                "Health check port '{port}' must be 'traffic-port' or a port between 1 and 65535"
            ));
        }
        tg.health_check_port = port.clone();
    }
    if let Some(path) = &h.health_check_path {
        if !http {
            return bad("A health check path can only be set with the HTTP health check protocol".into());
        }
        if !path.starts_with('/') || path.len() > 1024 {
            return bad(format!(
                "Health check path '{path}' must begin with '/' and be at most 1024 characters"
            ));
        }
        tg.health_check_path = Some(path.clone());
    }
    if let Some(m) = &h.matcher {
        if !http {
            return bad("A matcher can only be set with the HTTP health check protocol".into());
        }
        if m.grpc_code.is_some() {
            return bad("gRPC matchers are not supported by Gantry".into());
        }
        let code = m.http_code.clone().unwrap_or_default();
        if parse_matcher(&code).is_none() {
            return bad(format!(
                "Matcher HttpCode '{code}' must be codes between 200 and 499, separated by commas or as a range (200-299)"
            ));
        }
        tg.matcher = Some(m.clone());
    }
    Ok(())
}

fn tg_not_found(arn: &str) -> ElbError {
    ElbError::new(
        "TargetGroupNotFoundException",
        format!("Target groups '{arn}' not found"),
    )
}

/// HTTP codes a matcher accepts ("200", "200,202", "200-299"), or None when malformed.
pub fn parse_matcher(spec: &str) -> Option<Vec<(u16, u16)>> {
    let ranges: Option<Vec<(u16, u16)>> = spec
        .split(',')
        .map(|part| {
            let (lo, hi) = part.split_once('-').unwrap_or((part, part));
            let (lo, hi) = (lo.trim().parse::<u16>().ok()?, hi.trim().parse::<u16>().ok()?);
            (200 <= lo && lo <= hi && hi <= 499).then_some((lo, hi))
        })
        .collect();
    ranges.filter(|r| !r.is_empty())
}

impl Elb {
    pub(super) fn tg_key(scope: &Scope, name: &str) -> String {
        Self::key(scope, &format!("tg/{name}"))
    }

    pub async fn create_target_group(&self, scope: &Scope, input: Value) -> Result<Value, ElbError> {
        only(&input, CREATE_MEMBERS)?;
        let input: CreateInput = parse(input)?;
        validate_name("Target group", &input.name)?;
        validate_tags(&input.tags)?;
        let tg = with_defaults(scope, &input, &Self::new_id())?;
        let key = Self::tg_key(scope, &input.name);
        if self.create(&key, &Record::new(tg.clone(), input.tags.clone())).await? {
            return Ok(json!({"TargetGroups": [tg]}));
        }
        let (existing, _) = self
            .load::<Record<TargetGroup>>(&key)
            .await?
            .ok_or_else(|| ElbError::server("vanished"))?;
        let mut same = tg.clone();
        same.target_group_arn = existing.item.target_group_arn.clone();
        if existing.item != same {
            return Err(ElbError::new(
                "DuplicateTargetGroupNameException",
                format!(
                    "A target group with the same name '{}' exists, but with different settings",
                    input.name
                ),
            ));
        }
        Ok(json!({"TargetGroups": [self.with_usage(scope, vec![existing.item]).await?]}))
    }

    /// The group an ARN names, with its store revision.
    pub(super) async fn find_tg(&self, scope: &Scope, arn: &str) -> Result<(Record<TargetGroup>, i64), ElbError> {
        let not_found = || tg_not_found(arn);
        let Some(Named::TargetGroup { name, .. }) = Self::parse_arn(scope, arn) else {
            return Err(not_found());
        };
        match self.load::<Record<TargetGroup>>(&Self::tg_key(scope, &name)).await? {
            Some((r, rev)) if r.item.target_group_arn == arn => Ok((r, rev)),
            _ => Err(not_found()),
        }
    }

    /// Fills in LoadBalancerArns from the listeners and rules that use each group.
    async fn with_usage(&self, scope: &Scope, mut groups: Vec<TargetGroup>) -> Result<Vec<TargetGroup>, ElbError> {
        let usage = self.tg_usage(scope).await?;
        for g in &mut groups {
            g.load_balancer_arns = usage
                .get(&g.target_group_arn)
                .cloned()
                .unwrap_or_default()
                .into_iter()
                .collect();
        }
        Ok(groups)
    }

    pub async fn describe_target_groups(&self, scope: &Scope, input: Value) -> Result<Value, ElbError> {
        #[derive(Deserialize)]
        #[serde(rename_all = "PascalCase", deny_unknown_fields)]
        struct Input {
            #[serde(default)]
            load_balancer_arn: Option<String>,
            #[serde(default)]
            target_group_arns: Option<Vec<String>>,
            #[serde(default)]
            names: Option<Vec<String>>,
            #[serde(default)]
            marker: Option<String>,
            #[serde(default)]
            page_size: Option<i64>,
        }
        let input: Input = parse(input)?;
        let filters = [
            input.load_balancer_arn.is_some(),
            input.target_group_arns.is_some(),
            input.names.is_some(),
        ];
        if filters.iter().filter(|f| **f).count() > 1 {
            return Err(ElbError::validation(
                "Only one of load balancer ARN, target group ARNs or names can be specified",
            ));
        }
        let mut found = vec![];
        if let Some(arns) = &input.target_group_arns {
            for arn in arns {
                found.push(self.find_tg(scope, arn).await?.0.item);
            }
        } else if let Some(names) = &input.names {
            let not_found = |n: &str| {
                ElbError::new(
                    "TargetGroupNotFoundException",
                    format!("One or more target groups not found: '{n}'"),
                )
            };
            let recs: Vec<Record<TargetGroup>> = self.by_names(scope, "tg", names, not_found).await?;
            found = recs.into_iter().map(|r| r.item).collect();
        } else {
            let all: Vec<Record<TargetGroup>> = self.list(&Self::key(scope, "tg/")).await?;
            found = all.into_iter().map(|r| r.item).collect();
        }
        let mut found = self.with_usage(scope, found).await?;
        if let Some(lb) = &input.load_balancer_arn {
            self.find_lb(scope, lb).await?;
            found.retain(|g| g.load_balancer_arns.contains(lb));
        }
        let (items, next) = page(
            found,
            |g| g.target_group_name.clone(),
            input.marker.as_deref(),
            input.page_size,
        );
        Ok(json!({"TargetGroups": items, "NextMarker": next}))
    }

    pub async fn modify_target_group(&self, scope: &Scope, input: Value) -> Result<Value, ElbError> {
        #[derive(Deserialize)]
        #[serde(rename_all = "PascalCase")]
        struct Input {
            target_group_arn: String,
            #[serde(flatten)]
            health: HealthCheck,
        }
        let mut members = vec!["TargetGroupArn"];
        members.extend(
            CREATE_MEMBERS
                .iter()
                .filter(|m| m.starts_with("Health") || m.ends_with("ThresholdCount") || **m == "Matcher"),
        );
        only(&input, &members)?;
        let input: Input = parse(input)?;
        let (tg, _) = self.find_tg(scope, &input.target_group_arn).await?;
        let key = Self::tg_key(scope, &tg.item.target_group_name);
        let arn = input.target_group_arn.clone();
        let updated = self
            .edit::<Record<TargetGroup>, _>(
                &key,
                |r| r.item.target_group_arn == arn,
                || tg_not_found(&arn),
                |r| {
                    apply_health(&mut r.item, &input.health)?;
                    Ok(r.item.clone())
                },
            )
            .await?;
        Ok(json!({"TargetGroups": self.with_usage(scope, vec![updated]).await?}))
    }

    pub async fn delete_target_group(&self, scope: &Scope, input: Value) -> Result<Value, ElbError> {
        let arn = arn_member(&input, "TargetGroupArn")?;
        let tg = match self.find_tg(scope, &arn).await {
            Ok((tg, _)) => tg,
            // Deleting a group that is already gone succeeds, as in ELBv2.
            Err(e) if e.shape == "TargetGroupNotFoundException" => return Ok(json!({})),
            Err(e) => return Err(e),
        };
        if self.tg_usage(scope).await?.contains_key(&arn) {
            return Err(ElbError::new(
                "ResourceInUseException",
                format!("Target group '{arn}' is currently in use by a listener or a rule"),
            ));
        }
        self.delete_key(&Self::targets_key(scope, &tg.item.target_group_name))
            .await?;
        self.forget_group_health(scope, &tg.item.target_group_name).await?;
        self.delete_key(&Self::tg_key(scope, &tg.item.target_group_name))
            .await?;
        Ok(json!({}))
    }

    pub async fn describe_target_group_attributes(&self, scope: &Scope, input: Value) -> Result<Value, ElbError> {
        let arn = arn_member(&input, "TargetGroupArn")?;
        let (tg, _) = self.find_tg(scope, &arn).await?;
        let table = attributes::tg_attribute_defaults(tg.item.protocol.as_deref().unwrap_or(""));
        Ok(json!({"Attributes": attributes::described(&table, &tg.attributes)}))
    }

    pub async fn modify_target_group_attributes(&self, scope: &Scope, input: Value) -> Result<Value, ElbError> {
        let arn = arn_member(&input, "TargetGroupArn")?;
        let changes = attributes::parse_changes(&input)?;
        let (tg, _) = self.find_tg(scope, &arn).await?;
        let table = attributes::tg_attribute_defaults(tg.item.protocol.as_deref().unwrap_or(""));
        for (k, v) in &changes {
            attributes::check_tg(&table, k, v)?;
        }
        let key = Self::tg_key(scope, &tg.item.target_group_name);
        let attrs = self
            .edit::<Record<TargetGroup>, _>(
                &key,
                |r| r.item.target_group_arn == arn,
                || tg_not_found(&arn),
                |r| {
                    attributes::apply(&table, &mut r.attributes, &changes);
                    attributes::check_tg_combination(&table, &r.attributes)?;
                    Ok(r.attributes.clone())
                },
            )
            .await?;
        Ok(json!({"Attributes": attributes::described(&table, &attrs)}))
    }

    pub(super) async fn tg_tags(&self, scope: &Scope, arn: &str, edit: TagEdit<'_>) -> Result<Vec<Tag>, ElbError> {
        let (tg, _) = self.find_tg(scope, arn).await?;
        let key = Self::tg_key(scope, &tg.item.target_group_name);
        self.edit::<Record<TargetGroup>, _>(
            &key,
            |r| r.item.target_group_arn == arn,
            || tg_not_found(arn),
            |r| {
                r.tags = edit(&r.tags)?;
                Ok(r.tags.clone())
            },
        )
        .await
    }
}
