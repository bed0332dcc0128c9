//! The EC2 networking subset ECS users touch (EC2's Query dialect, version 2016-11-15), over
//! `gantry_control::ec2`: the default VPC and its subnets (the nodes' task networks), the
//! zones, and security groups with their rules and tags.

use crate::api::{Api, ApiError};
use crate::protocol::Reply;
use gantry_control::ec2::{self, Ec2Error, Peer, Rule, SecurityGroup, Subnet, Tag};
use gantry_types::arn::Scope;
use serde_json::{json, Value};
use std::net::Ipv4Addr;

impl From<Ec2Error> for ApiError {
    fn from(e: Ec2Error) -> ApiError {
        let status = match e.code {
            "Unavailable" => axum::http::StatusCode::SERVICE_UNAVAILABLE,
            "InternalError" => axum::http::StatusCode::INTERNAL_SERVER_ERROR,
            _ => axum::http::StatusCode::BAD_REQUEST,
        };
        ApiError::new(e.code, e.message, status)
    }
}

pub fn handler<'a>(api: &'a Api, scope: &'a Scope, op: &'a str, input: Value) -> Reply<'a> {
    Box::pin(handle(api, scope, op, input))
}

fn strings(input: &Value, key: &str) -> Vec<String> {
    let list = input.get(key).and_then(Value::as_array).into_iter().flatten();
    list.filter_map(|v| v.as_str().map(String::from)).collect()
}

fn text<'a>(input: &'a Value, key: &str) -> Option<&'a str> {
    input.get(key).and_then(Value::as_str)
}

fn required<'a>(input: &'a Value, key: &str) -> Result<&'a str, ApiError> {
    text(input, key).ok_or_else(|| {
        ApiError::client(
            "MissingParameter",
            format!("The request must contain the parameter {key}"),
        )
    })
}

/// Filters as (name, values).
fn filters(input: &Value) -> Vec<(String, Vec<String>)> {
    let list = input.get("Filters").and_then(Value::as_array).into_iter().flatten();
    list.map(|f| (text(f, "Name").unwrap_or_default().to_string(), strings(f, "Values")))
        .collect()
}

/// Whether `value` passes a filter's values (EC2 filters match any of them, `*` and `?`
/// wildcards included).
fn any_matches(values: &[String], value: &str) -> bool {
    values.iter().any(|p| gantry_policy::glob::like(p, value))
}

fn tags_of(input: &Value, key: &str) -> Vec<Tag> {
    let list = input.get(key).and_then(Value::as_array).into_iter().flatten();
    list.filter_map(|t| {
        Some(Tag {
            key: text(t, "Key")?.to_string(),
            value: text(t, "Value").unwrap_or_default().to_string(),
        })
    })
    .collect()
}

fn tags_out(tags: &[Tag]) -> Value {
    json!(tags
        .iter()
        .map(|t| json!({"Key": t.key, "Value": t.value}))
        .collect::<Vec<_>>())
}

/// A filter on tags (`tag:KEY`, `tag-key`), answered for a resource's tags; None when the
/// filter is not about tags.
fn tag_filter(name: &str, values: &[String], tags: &[Tag]) -> Option<bool> {
    if let Some(key) = name.strip_prefix("tag:") {
        return Some(tags.iter().any(|t| t.key == key && any_matches(values, &t.value)));
    }
    (name == "tag-key").then(|| tags.iter().any(|t| any_matches(values, &t.key)))
}

fn unknown_filter(name: &str) -> ApiError {
    ApiError::client("InvalidParameterValue", format!("The filter '{name}' is invalid"))
}

async fn handle(api: &Api, scope: &Scope, op: &str, input: Value) -> Result<Value, ApiError> {
    if input.get("DryRun").and_then(Value::as_bool) == Some(true) {
        // Authorised already, at the front: what a dry run asks.
        return Err(ApiError::new(
            "DryRunOperation",
            "Request would have succeeded, but DryRun flag is set.",
            axum::http::StatusCode::PRECONDITION_FAILED,
        ));
    }
    let e = api.control.ec2();
    Ok(match op {
        "DescribeVpcs" => describe_vpcs(api, scope, &input).await?,
        "DescribeSubnets" => describe_subnets(api, scope, &input).await?,
        "DescribeAvailabilityZones" => describe_zones(api, scope, &input).await?,
        "DescribeSecurityGroups" => describe_groups(api, scope, &input).await?,
        "CreateSecurityGroup" => {
            let name = required(&input, "GroupName")?;
            let description = required(&input, "Description")?;
            let tags = spec_tags(&input)?;
            let g = e
                .create_group(scope, name, description, text(&input, "VpcId"), tags)
                .await?;
            let mut out = json!({"GroupId": g.id, "SecurityGroupArn": g.arn(&scope.region)});
            if !g.tags.is_empty() {
                out["Tags"] = tags_out(&g.tags);
            }
            out
        }
        "DeleteSecurityGroup" => {
            let g = e
                .find(scope, text(&input, "GroupId"), text(&input, "GroupName"))
                .await?;
            let in_use = api.control.tasks_in_group(scope, &g.id).await.map_err(ApiError::from)?
                || api.elb.load_balancers_in_group(scope, &g.id).await?;
            e.delete_group(scope, &g, in_use).await?;
            json!({"Return": true, "GroupId": g.id})
        }
        "AuthorizeSecurityGroupIngress" | "AuthorizeSecurityGroupEgress" => {
            let egress = op.ends_with("Egress");
            let g = group_of(api, scope, &input, egress).await?;
            let rules = rules_of(api, scope, &input, egress).await?;
            let added = e.authorize(scope, &g.id, egress, rules).await?;
            let out: Vec<Value> = added.iter().map(|r| rule_out(scope, &g, r, egress)).collect();
            json!({"Return": true, "SecurityGroupRules": out})
        }
        "RevokeSecurityGroupIngress" | "RevokeSecurityGroupEgress" => {
            let egress = op.ends_with("Egress");
            let g = group_of(api, scope, &input, egress).await?;
            let rules = rules_of(api, scope, &input, egress).await?;
            e.revoke(scope, &g.id, egress, rules).await?;
            json!({"Return": true})
        }
        "CreateTags" | "DeleteTags" => {
            let tags = tags_of(&input, "Tags");
            for id in strings(&input, "Resources") {
                e.tag(scope, &id, &tags, op == "DeleteTags").await?;
            }
            json!({})
        }
        "DescribeTags" => describe_tags(api, scope, &input).await?,
        other => {
            return Err(ApiError::client(
                "InvalidAction",
                format!("The action {other} is not valid for this web service."),
            ))
        }
    })
}

/// TagSpecifications' tags for a security group (other resource types are refused).
fn spec_tags(input: &Value) -> Result<Vec<Tag>, ApiError> {
    let mut tags = vec![];
    for spec in input
        .get("TagSpecifications")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let kind = text(spec, "ResourceType").unwrap_or_default();
        if kind != "security-group" {
            return Err(ApiError::client(
                "InvalidParameterValue",
                format!("'{kind}' is not a valid taggable resource type for this operation."),
            ));
        }
        tags.extend(tags_of(spec, "Tags"));
    }
    Ok(tags)
}

/// The group a rule change is for: GroupId, or (ingress only, as in EC2) GroupName.
async fn group_of(api: &Api, scope: &Scope, input: &Value, egress: bool) -> Result<SecurityGroup, ApiError> {
    let id = text(input, "GroupId");
    if egress && id.is_none() {
        return Err(ApiError::client(
            "MissingParameter",
            "The request must contain the parameter groupId",
        ));
    }
    Ok(api.control.ec2().find(scope, id, text(input, "GroupName")).await?)
}

/// The rules a request names: IpPermissions, or the flat CidrIp/IpProtocol/FromPort/ToPort
/// and SourceSecurityGroupName form.
async fn rules_of(api: &Api, scope: &Scope, input: &Value, egress: bool) -> Result<Vec<Rule>, ApiError> {
    let mut perms: Vec<Value> = input
        .get("IpPermissions")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let flat = ["CidrIp", "IpProtocol", "FromPort", "ToPort", "SourceSecurityGroupName"];
    if flat.iter().any(|k| input.get(*k).is_some()) {
        if egress || !perms.is_empty() {
            return Err(ApiError::client(
                "InvalidParameterCombination",
                "The parameter 'ipPermissions' may not be used in combination with 'cidrIp', 'ipProtocol', 'fromPort', 'toPort' or 'sourceSecurityGroupName'",
            ));
        }
        let mut p = json!({"IpProtocol": text(input, "IpProtocol").unwrap_or("-1")});
        for k in ["FromPort", "ToPort"] {
            if let Some(v) = input.get(k) {
                p[k] = v.clone();
            }
        }
        if let Some(c) = text(input, "CidrIp") {
            p["IpRanges"] = json!([{"CidrIp": c}]);
        }
        if let Some(n) = text(input, "SourceSecurityGroupName") {
            p["UserIdGroupPairs"] = json!([{"GroupName": n}]);
        }
        perms.push(p);
    }
    if perms.is_empty() {
        return Err(ApiError::client(
            "MissingParameter",
            "No ipPermissions given: name at least one rule.",
        ));
    }
    let mut rules = vec![];
    for p in &perms {
        rules.extend(permission_rules(api, scope, p).await?);
    }
    Ok(rules)
}

/// One IpPermission as rules, one per peer.
async fn permission_rules(api: &Api, scope: &Scope, p: &Value) -> Result<Vec<Rule>, ApiError> {
    let protocol = ec2::normalise_protocol(required(p, "IpProtocol")?)?;
    let port = |k| p.get(k).and_then(Value::as_i64);
    let (from, to) = ec2::check_ports(&protocol, port("FromPort"), port("ToPort"))?;
    for unsupported in ["Ipv6Ranges", "PrefixListIds"] {
        if p.get(unsupported)
            .and_then(Value::as_array)
            .is_some_and(|a| !a.is_empty())
        {
            return Err(ApiError::client(
                "InvalidParameterValue",
                format!("{unsupported} are not supported by Gantry: tasks have IPv4 addresses only."),
            ));
        }
    }
    let rule = |peer, description: Option<&str>| Rule {
        id: String::new(),
        protocol: protocol.clone(),
        from_port: from,
        to_port: to,
        peer,
        description: description.map(String::from),
    };
    let mut out = vec![];
    for r in p.get("IpRanges").and_then(Value::as_array).into_iter().flatten() {
        let cidr = required(r, "CidrIp")?;
        ec2::check_cidr(cidr)?;
        out.push(rule(Peer::Cidr(cidr.to_string()), text(r, "Description")));
    }
    for pair in p
        .get("UserIdGroupPairs")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        if let Some(owner) = text(pair, "UserId").filter(|o| *o != scope.account) {
            return Err(ApiError::client(
                "InvalidParameterValue",
                format!("Groups of other accounts ({owner}) cannot be referenced in Gantry."),
            ));
        }
        let g = api
            .control
            .ec2()
            .find(scope, text(pair, "GroupId"), text(pair, "GroupName"))
            .await?;
        out.push(rule(Peer::Group(g.id), text(pair, "Description")));
    }
    if out.is_empty() {
        return Err(ApiError::client(
            "MissingParameter",
            "Each rule needs a source or destination: IpRanges or UserIdGroupPairs.",
        ));
    }
    Ok(out)
}

fn rule_out(scope: &Scope, g: &SecurityGroup, r: &Rule, egress: bool) -> Value {
    let mut v = json!({
        "SecurityGroupRuleId": r.id, "GroupId": g.id, "GroupOwnerId": g.owner, "IsEgress": egress,
        "IpProtocol": r.protocol, "FromPort": r.from_port, "ToPort": r.to_port,
        "SecurityGroupRuleArn": format!("arn:aws:ec2:{}:{}:security-group-rule/{}", scope.region, g.owner, r.id),
    });
    match &r.peer {
        Peer::Cidr(c) => v["CidrIpv4"] = json!(c),
        Peer::Group(id) => v["ReferencedGroupInfo"] = json!({"GroupId": id, "UserId": g.owner}),
    }
    if let Some(d) = &r.description {
        v["Description"] = json!(d);
    }
    v
}

/// One IpPermission being gathered: traffic, and its CIDR and group peers.
struct Permission {
    protocol: String,
    from: i64,
    to: i64,
    ranges: Vec<Value>,
    groups: Vec<Value>,
}

/// Rules as EC2 reports them: grouped into IpPermissions by protocol and ports.
fn permissions_out(g: &SecurityGroup, rules: &[Rule]) -> Value {
    let mut perms: Vec<Permission> = vec![];
    for r in rules {
        let same =
            |p: &Permission| (p.protocol.as_str(), p.from, p.to) == (r.protocol.as_str(), r.from_port, r.to_port);
        let i = match perms.iter().position(same) {
            Some(i) => i,
            None => {
                perms.push(Permission {
                    protocol: r.protocol.clone(),
                    from: r.from_port,
                    to: r.to_port,
                    ranges: vec![],
                    groups: vec![],
                });
                perms.len() - 1
            }
        };
        let mut peer = match &r.peer {
            Peer::Cidr(c) => json!({"CidrIp": c}),
            Peer::Group(id) => json!({"GroupId": id, "UserId": g.owner}),
        };
        if let Some(d) = &r.description {
            peer["Description"] = json!(d);
        }
        match r.peer {
            Peer::Cidr(_) => perms[i].ranges.push(peer),
            Peer::Group(_) => perms[i].groups.push(peer),
        }
    }
    json!(perms
        .into_iter()
        .map(|p| {
            let mut v = json!({"IpProtocol": p.protocol, "IpRanges": p.ranges, "UserIdGroupPairs": p.groups,
                               "Ipv6Ranges": [], "PrefixListIds": []});
            if p.protocol != "-1" {
                v["FromPort"] = json!(p.from);
                v["ToPort"] = json!(p.to);
            }
            v
        })
        .collect::<Vec<_>>())
}

fn group_out(scope: &Scope, g: &SecurityGroup) -> Value {
    let mut v = json!({
        "GroupId": g.id, "GroupName": g.name, "Description": g.description, "VpcId": g.vpc_id,
        "OwnerId": g.owner, "SecurityGroupArn": g.arn(&scope.region),
        "IpPermissions": permissions_out(g, &g.ingress), "IpPermissionsEgress": permissions_out(g, &g.egress),
    });
    if !g.tags.is_empty() {
        v["Tags"] = tags_out(&g.tags);
    }
    v
}

async fn describe_groups(api: &Api, scope: &Scope, input: &Value) -> Result<Value, ApiError> {
    let all = api.control.ec2().groups(scope).await?;
    let (ids, names) = (strings(input, "GroupIds"), strings(input, "GroupNames"));
    for id in &ids {
        if !all.iter().any(|g| &g.id == id) {
            return Err(Ec2Error::no_group(id).into());
        }
    }
    for n in &names {
        if !all.iter().any(|g| &g.name == n) {
            return Err(Ec2Error::no_group(n).into());
        }
    }
    let fs = filters(input);
    let mut out = vec![];
    for g in &all {
        if (!ids.is_empty() && !ids.contains(&g.id)) || (!names.is_empty() && !names.contains(&g.name)) {
            continue;
        }
        let mut keep = true;
        for (name, values) in &fs {
            keep &= match name.as_str() {
                "group-id" => any_matches(values, &g.id),
                "group-name" => any_matches(values, &g.name),
                "vpc-id" => any_matches(values, &g.vpc_id),
                "description" => any_matches(values, &g.description),
                "owner-id" => any_matches(values, &g.owner),
                other => tag_filter(other, values, &g.tags).ok_or_else(|| unknown_filter(other))?,
            };
        }
        if keep {
            out.push(group_out(scope, g));
        }
    }
    Ok(json!({"SecurityGroups": out}))
}

async fn describe_tags(api: &Api, scope: &Scope, input: &Value) -> Result<Value, ApiError> {
    let fs = filters(input);
    let mut out = vec![];
    for g in api.control.ec2().groups(scope).await? {
        for t in &g.tags {
            let mut keep = true;
            for (name, values) in &fs {
                keep &= match name.as_str() {
                    "resource-id" => any_matches(values, &g.id),
                    "resource-type" => any_matches(values, "security-group"),
                    "key" => any_matches(values, &t.key),
                    "value" => any_matches(values, &t.value),
                    other => return Err(unknown_filter(other)),
                };
            }
            if keep {
                out.push(json!({"ResourceId": g.id, "ResourceType": "security-group", "Key": t.key, "Value": t.value}));
            }
        }
    }
    Ok(json!({"Tags": out}))
}

/// The subnets of the default VPC: one per node with a task network, in its zone.
pub async fn subnets(api: &Api, scope: &Scope) -> Result<Vec<Subnet>, ApiError> {
    let nodes = api.control.nodes().await?;
    let mut out: Vec<Subnet> = nodes
        .iter()
        .filter_map(|n| {
            Some(Subnet {
                id: ec2::subnet_id(scope, &n.spec.name),
                zone: n.zone(&scope.region),
                cidr: n.spec.subnet.clone()?,
                node: n.spec.name.clone(),
            })
        })
        .collect();
    out.sort_by(|a, b| (&a.zone, &a.node).cmp(&(&b.zone, &b.node)));
    Ok(out)
}

/// The smallest block holding every subnet (10.0.0.0/8 with none).
fn covering(subnets: &[Subnet]) -> String {
    let blocks: Vec<(u32, u8)> = subnets
        .iter()
        .filter_map(|s| ec2::check_cidr(&s.cidr).ok())
        .map(|(ip, len)| (u32::from(ip), len))
        .collect();
    let Some(&(first, first_len)) = blocks.first() else {
        return "10.0.0.0/8".into();
    };
    let mut len = blocks.iter().map(|b| b.1).min().unwrap_or(first_len);
    while len > 0 && blocks.iter().any(|(ip, _)| (ip ^ first) >> (32 - len as u32) != 0) {
        len -= 1;
    }
    let mask = if len == 0 { 0 } else { u32::MAX << (32 - len as u32) };
    format!("{}/{len}", Ipv4Addr::from(first & mask))
}

async fn describe_vpcs(api: &Api, scope: &Scope, input: &Value) -> Result<Value, ApiError> {
    let id = ec2::vpc_id(scope);
    for asked in strings(input, "VpcIds") {
        if asked != id {
            return Err(ApiError::client(
                "InvalidVpcID.NotFound",
                format!("The vpc ID '{asked}' does not exist"),
            ));
        }
    }
    let cidr = covering(&subnets(api, scope).await?);
    let vpc = json!({
        "VpcId": id, "CidrBlock": cidr, "State": "available", "IsDefault": true, "OwnerId": scope.account,
        "InstanceTenancy": "default",
        "CidrBlockAssociationSet": [{"AssociationId": format!("vpc-cidr-assoc-{}", &id[4..]), "CidrBlock": cidr,
                                     "CidrBlockState": {"State": "associated"}}],
    });
    for (name, values) in filters(input) {
        let keep = match name.as_str() {
            "vpc-id" => any_matches(&values, &id),
            "is-default" => any_matches(&values, "true"),
            "state" => any_matches(&values, "available"),
            "cidr" | "cidr-block-association.cidr-block" => any_matches(&values, &cidr),
            "owner-id" => any_matches(&values, &scope.account),
            other => return Err(unknown_filter(other)),
        };
        if !keep {
            return Ok(json!({"Vpcs": []}));
        }
    }
    Ok(json!({"Vpcs": [vpc]}))
}

fn free_addresses(cidr: &str) -> i64 {
    // The network, gateway and broadcast addresses are not for tasks.
    ec2::check_cidr(cidr)
        .map(|(_, len)| (1i64 << (32 - len as i64)) - 3)
        .unwrap_or(0)
}

async fn describe_subnets(api: &Api, scope: &Scope, input: &Value) -> Result<Value, ApiError> {
    let all = subnets(api, scope).await?;
    let ids = strings(input, "SubnetIds");
    for id in &ids {
        if !all.iter().any(|s| &s.id == id) {
            return Err(ApiError::client(
                "InvalidSubnetID.NotFound",
                format!("The subnet ID '{id}' does not exist"),
            ));
        }
    }
    let vpc = ec2::vpc_id(scope);
    let fs = filters(input);
    let mut out = vec![];
    for s in &all {
        if !ids.is_empty() && !ids.contains(&s.id) {
            continue;
        }
        let mut keep = true;
        for (name, values) in &fs {
            keep &= match name.as_str() {
                "subnet-id" => any_matches(values, &s.id),
                "vpc-id" => any_matches(values, &vpc),
                "availability-zone" => any_matches(values, &s.zone),
                "cidr-block" | "cidr" => any_matches(values, &s.cidr),
                "default-for-az" => any_matches(values, "true"),
                "state" => any_matches(values, "available"),
                other => return Err(unknown_filter(other)),
            };
        }
        if keep {
            out.push(json!({
                "SubnetId": s.id, "VpcId": vpc, "CidrBlock": s.cidr, "AvailabilityZone": s.zone,
                "State": "available", "DefaultForAz": true, "MapPublicIpOnLaunch": false,
                "AvailableIpAddressCount": free_addresses(&s.cidr), "OwnerId": scope.account,
                "SubnetArn": format!("arn:aws:ec2:{}:{}:subnet/{}", scope.region, scope.account, s.id),
                "Tags": [{"Key": "gantry:node", "Value": s.node}],
            }));
        }
    }
    Ok(json!({"Subnets": out}))
}

async fn describe_zones(api: &Api, scope: &Scope, input: &Value) -> Result<Value, ApiError> {
    let mut zones: Vec<String> = api
        .control
        .nodes()
        .await?
        .iter()
        .map(|n| n.zone(&scope.region))
        .collect();
    zones.sort();
    zones.dedup();
    let names = strings(input, "ZoneNames");
    let out: Vec<Value> = zones
        .iter()
        .filter(|z| names.is_empty() || names.contains(z))
        .map(|z| {
            json!({"ZoneName": z, "State": "available", "RegionName": scope.region, "ZoneType": "availability-zone",
                   "OptInStatus": "opt-in-not-required", "GroupName": scope.region, "NetworkBorderGroup": scope.region})
        })
        .collect();
    Ok(json!({"AvailabilityZones": out}))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_vpc_covers_every_node_network() {
        let s = |cidr: &str| Subnet {
            id: String::new(),
            zone: String::new(),
            cidr: cidr.into(),
            node: String::new(),
        };
        assert_eq!(covering(&[]), "10.0.0.0/8");
        assert_eq!(covering(&[s("10.217.0.0/24")]), "10.217.0.0/24");
        assert_eq!(
            covering(&[s("10.217.5.0/24"), s("10.217.6.0/24"), s("10.217.7.0/24")]),
            "10.217.4.0/22"
        );
        assert_eq!(covering(&[s("10.0.0.0/16"), s("192.168.0.0/16")]), "0.0.0.0/0");
        assert_eq!(free_addresses("10.0.0.0/24"), 253);
    }
}
