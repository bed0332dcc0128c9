//! The EC2 networking subset ECS uses: each account and region's default VPC (the nodes' task
//! networks), its subnets (one per node network, in that node's zone) and security groups
//! with their rules. Groups are one record each under `/ec2/sgs/<account>/<region>/<id>`;
//! the default group is made on first use, as AWS makes it with the VPC.

use crate::records::{RecordError, Records};
use crate::{random_hex, Clock};
use gantry_store::Store;
use gantry_types::arn::Scope;
use serde::{Deserialize, Serialize};
use std::net::Ipv4Addr;
use std::sync::Arc;

mod view;
pub use view::{task_address, task_groups, task_membership, Endpoint, SecuritySource, SecurityView};

pub const GROUPS_PREFIX: &str = "/ec2/sgs/";
/// Most groups a task (an ENI) may be in, as in EC2.
pub const MAX_GROUPS_PER_TASK: usize = 5;
/// Most rules per direction per group, as EC2's default quota.
pub const MAX_RULES: usize = 60;

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{message}")]
pub struct Ec2Error {
    pub code: &'static str,
    pub message: String,
}

impl Ec2Error {
    pub fn new(code: &'static str, message: impl Into<String>) -> Ec2Error {
        Ec2Error {
            code,
            message: message.into(),
        }
    }
    fn invalid(message: impl Into<String>) -> Ec2Error {
        Ec2Error::new("InvalidParameterValue", message)
    }
    pub fn no_group(id: &str) -> Ec2Error {
        Ec2Error::new(
            "InvalidGroup.NotFound",
            format!("The security group '{id}' does not exist"),
        )
    }
}

impl From<RecordError> for Ec2Error {
    fn from(e: RecordError) -> Ec2Error {
        Ec2Error::new("Unavailable", format!("The service is unavailable: {e}"))
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tag {
    pub key: String,
    pub value: String,
}

/// Where a rule lets traffic come from (ingress) or go to (egress).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Peer {
    Cidr(String),
    /// Every task in that group.
    Group(String),
}

/// One rule: a protocol ("tcp", "udp", "icmp" or "-1" for all), a port range (ICMP: type and
/// code; -1 for any), and one peer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rule {
    pub id: String,
    pub protocol: String,
    pub from_port: i64,
    pub to_port: i64,
    pub peer: Peer,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
}

impl Rule {
    /// Same traffic and peer (descriptions and ids aside): what makes a rule a duplicate.
    pub fn same(&self, other: &Rule) -> bool {
        (&self.protocol, self.from_port, self.to_port, &self.peer)
            == (&other.protocol, other.from_port, other.to_port, &other.peer)
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SecurityGroup {
    pub id: String,
    pub name: String,
    pub description: String,
    pub vpc_id: String,
    pub owner: String,
    #[serde(default)]
    pub ingress: Vec<Rule>,
    #[serde(default)]
    pub egress: Vec<Rule>,
    #[serde(default)]
    pub tags: Vec<Tag>,
}

impl SecurityGroup {
    pub fn arn(&self, region: &str) -> String {
        format!("arn:aws:ec2:{region}:{}:security-group/{}", self.owner, self.id)
    }
}

/// A subnet: one node's task network.
#[derive(Debug, Clone, PartialEq)]
pub struct Subnet {
    pub id: String,
    pub zone: String,
    pub cidr: String,
    pub node: String,
}

/// A stable EC2-style id: the prefix and 17 hex digits of a digest of `seed`.
fn stable_id(prefix: &str, seed: &str) -> String {
    let d = ring::digest::digest(&ring::digest::SHA256, seed.as_bytes());
    let hex: String = d.as_ref().iter().map(|b| format!("{b:02x}")).collect();
    format!("{prefix}-{}", &hex[..17])
}

pub fn vpc_id(scope: &Scope) -> String {
    stable_id("vpc", &format!("vpc/{}/{}", scope.account, scope.region))
}

pub fn default_group_id(scope: &Scope) -> String {
    stable_id("sg", &format!("default/{}/{}", scope.account, scope.region))
}

pub fn subnet_id(scope: &Scope, node: &str) -> String {
    stable_id("subnet", &format!("subnet/{}/{}/{node}", scope.account, scope.region))
}

/// A protocol as EC2 accepts it (names or numbers), normalised: "tcp", "udp", "icmp", "-1".
pub fn normalise_protocol(p: &str) -> Result<String, Ec2Error> {
    Ok(match p.to_ascii_lowercase().as_str() {
        "tcp" | "6" => "tcp",
        "udp" | "17" => "udp",
        "icmp" | "1" => "icmp",
        "-1" | "all" => "-1",
        other => {
            return Err(Ec2Error::invalid(format!(
                "Invalid value '{other}' for IP protocol. Unknown protocol (Gantry supports tcp, udp, icmp and -1)."
            )))
        }
    }
    .to_string())
}

/// Checks a rule's ports for its protocol and returns them as stored (all-protocol rules have
/// no ports: -1).
pub fn check_ports(protocol: &str, from: Option<i64>, to: Option<i64>) -> Result<(i64, i64), Ec2Error> {
    match protocol {
        "-1" => Ok((-1, -1)),
        "icmp" => {
            let (t, c) = (from.unwrap_or(-1), to.unwrap_or(-1));
            if !(-1..=255).contains(&t) || !(-1..=255).contains(&c) {
                return Err(Ec2Error::invalid(format!(
                    "ICMP type {t} and code {c} must be -1 or 0-255."
                )));
            }
            Ok((t, c))
        }
        _ => {
            let (Some(f), Some(t)) = (from, to) else {
                return Err(Ec2Error::new(
                    "MissingParameter",
                    format!("Invalid value 'null' for fromPort or toPort. Both are required for protocol {protocol}."),
                ));
            };
            if !(0..=65535).contains(&f) || !(0..=65535).contains(&t) || f > t {
                return Err(Ec2Error::invalid(format!(
                    "Invalid port range {f}-{t}: ports are 0-65535 and fromPort may not exceed toPort."
                )));
            }
            Ok((f, t))
        }
    }
}

/// An IPv4 CIDR block as EC2 accepts it.
pub fn check_cidr(cidr: &str) -> Result<(Ipv4Addr, u8), Ec2Error> {
    let bad = || Ec2Error::invalid(format!("CIDR block {cidr} is malformed"));
    let (ip, len) = cidr.split_once('/').ok_or_else(bad)?;
    let ip: Ipv4Addr = ip.parse().map_err(|_| bad())?;
    let len: u8 = len.parse().map_err(|_| bad())?;
    if len > 32 {
        return Err(bad());
    }
    Ok((ip, len))
}

fn group_key(scope: &Scope, id: &str) -> String {
    format!("{GROUPS_PREFIX}{}/{}/{id}", scope.account, scope.region)
}

/// Security groups over the store.
#[derive(Clone)]
pub struct Ec2 {
    records: Records,
}

impl Ec2 {
    pub fn new(store: Arc<dyn Store>, _clock: Arc<dyn Clock>) -> Ec2 {
        Ec2 {
            records: Records::new(store),
        }
    }

    /// The VPC's default group, made on first use: all traffic from its own members in, all
    /// traffic out.
    async fn default_group(&self, scope: &Scope) -> Result<SecurityGroup, Ec2Error> {
        let id = default_group_id(scope);
        let key = group_key(scope, &id);
        if let Some((g, _)) = self.records.load::<SecurityGroup>(&key).await? {
            return Ok(g);
        }
        let rule = |peer| Rule {
            id: format!("sgr-{}", random_hex(9)),
            protocol: "-1".into(),
            from_port: -1,
            to_port: -1,
            peer,
            description: None,
        };
        let g = SecurityGroup {
            id: id.clone(),
            name: "default".into(),
            description: "default VPC security group".into(),
            vpc_id: vpc_id(scope),
            owner: scope.account.clone(),
            ingress: vec![rule(Peer::Group(id.clone()))],
            egress: vec![rule(Peer::Cidr("0.0.0.0/0".into()))],
            tags: vec![],
        };
        if self.records.create(&key, &g).await? {
            return Ok(g);
        }
        // Another first use made it meanwhile: that one stands.
        let made = self.records.load::<SecurityGroup>(&key).await?;
        made.map(|(g, _)| g).ok_or_else(|| Ec2Error::no_group(&id))
    }

    /// Every group of the scope, the default one included.
    pub async fn groups(&self, scope: &Scope) -> Result<Vec<SecurityGroup>, Ec2Error> {
        self.default_group(scope).await?;
        Ok(self
            .records
            .list(&format!("{GROUPS_PREFIX}{}/{}/", scope.account, scope.region))
            .await?)
    }

    pub async fn group(&self, scope: &Scope, id: &str) -> Result<SecurityGroup, Ec2Error> {
        if !id.starts_with("sg-") {
            return Err(Ec2Error::new(
                "InvalidGroupId.Malformed",
                format!("Invalid id: \"{id}\" (expecting \"sg-...\")"),
            ));
        }
        if id == default_group_id(scope) {
            return self.default_group(scope).await;
        }
        match self.records.load(&group_key(scope, id)).await? {
            Some((g, _)) => Ok(g),
            None => Err(Ec2Error::no_group(id)),
        }
    }

    /// A group by id, or by name in the default VPC (EC2's GroupName parameters).
    pub async fn find(&self, scope: &Scope, id: Option<&str>, name: Option<&str>) -> Result<SecurityGroup, Ec2Error> {
        match (id, name) {
            (Some(id), _) => self.group(scope, id).await,
            (None, Some(name)) => self
                .groups(scope)
                .await?
                .into_iter()
                .find(|g| g.name == name)
                .ok_or_else(|| Ec2Error::no_group(name)),
            (None, None) => Err(Ec2Error::new(
                "MissingParameter",
                "The request must contain the parameter groupName or groupId",
            )),
        }
    }

    pub async fn create_group(
        &self,
        scope: &Scope,
        name: &str,
        description: &str,
        vpc: Option<&str>,
        tags: Vec<Tag>,
    ) -> Result<SecurityGroup, Ec2Error> {
        let vpc_id = vpc_id(scope);
        if let Some(v) = vpc.filter(|v| *v != vpc_id) {
            return Err(Ec2Error::new(
                "InvalidVpcID.NotFound",
                format!("The vpc ID '{v}' does not exist"),
            ));
        }
        if name.is_empty() || name.len() > 255 || name.starts_with("sg-") {
            return Err(Ec2Error::invalid(format!(
                "Invalid value '{name}' for groupName: 1 to 255 characters, not starting with sg-."
            )));
        }
        if description.len() > 255 {
            return Err(Ec2Error::invalid("The description may be up to 255 characters."));
        }
        if self.groups(scope).await?.iter().any(|g| g.name == name) {
            return Err(Ec2Error::new(
                "InvalidGroup.Duplicate",
                format!("The security group '{name}' already exists for VPC '{vpc_id}'"),
            ));
        }
        let g = SecurityGroup {
            id: format!("sg-{}", &random_hex(9)[..17]),
            name: name.into(),
            description: description.into(),
            vpc_id: vpc_id.clone(),
            owner: scope.account.clone(),
            ingress: vec![],
            // A new group lets everything out, as in EC2.
            egress: vec![Rule {
                id: format!("sgr-{}", &random_hex(9)[..17]),
                protocol: "-1".into(),
                from_port: -1,
                to_port: -1,
                peer: Peer::Cidr("0.0.0.0/0".into()),
                description: None,
            }],
            tags,
        };
        if !self.records.create(&group_key(scope, &g.id), &g).await? {
            return Err(Ec2Error::new(
                "InternalError",
                "A security group id collided; try again.",
            ));
        }
        Ok(g)
    }

    /// Deletes a group that no task uses and no other group's rule references.
    pub async fn delete_group(&self, scope: &Scope, g: &SecurityGroup, in_use: bool) -> Result<(), Ec2Error> {
        if g.id == default_group_id(scope) {
            return Err(Ec2Error::new(
                "CannotDelete",
                format!(
                    "the specified group: \"{}\" name: \"default\" cannot be deleted by a user",
                    g.id
                ),
            ));
        }
        let referenced = self.groups(scope).await?.iter().any(|o| {
            o.id != g.id
                && o.ingress
                    .iter()
                    .chain(&o.egress)
                    .any(|r| r.peer == Peer::Group(g.id.clone()))
        });
        if in_use || referenced {
            return Err(Ec2Error::new(
                "DependencyViolation",
                format!("resource {} has a dependent object", g.id),
            ));
        }
        self.records.delete(&group_key(scope, &g.id)).await?;
        Ok(())
    }

    /// Adds rules (ingress, or egress when `egress`): each new rule gets an id; one that is
    /// already there is refused, as EC2 refuses it, and nothing is added.
    pub async fn authorize(
        &self,
        scope: &Scope,
        id: &str,
        egress: bool,
        rules: Vec<Rule>,
    ) -> Result<Vec<Rule>, Ec2Error> {
        for r in &rules {
            if let Peer::Group(other) = &r.peer {
                self.group(scope, other).await?;
            }
        }
        self.group(scope, id).await?;
        self.records
            .update(&group_key(scope, id), |cur: Option<SecurityGroup>| {
                let mut g = cur.ok_or_else(|| Ec2Error::no_group(id))?;
                let list = if egress { &mut g.egress } else { &mut g.ingress };
                let mut added = vec![];
                for mut r in rules.clone() {
                    if list.iter().chain(&added).any(|x: &Rule| x.same(&r)) {
                        return Err(Ec2Error::new(
                            "InvalidPermission.Duplicate",
                            format!("the specified rule \"{}\" already exists", describe(&r)),
                        ));
                    }
                    r.id = format!("sgr-{}", &random_hex(9)[..17]);
                    added.push(r);
                }
                if list.len() + added.len() > MAX_RULES {
                    return Err(Ec2Error::new(
                        "RulesPerSecurityGroupLimitExceeded",
                        format!("The maximum number of rules per security group has been reached ({MAX_RULES})."),
                    ));
                }
                list.extend(added.iter().cloned());
                Ok((Some(g), added))
            })
            .await
    }

    /// Removes rules matching these (by traffic and peer); EC2 refuses a revoke naming a rule
    /// the group does not have.
    pub async fn revoke(&self, scope: &Scope, id: &str, egress: bool, rules: Vec<Rule>) -> Result<(), Ec2Error> {
        self.group(scope, id).await?;
        self.records
            .update(&group_key(scope, id), |cur: Option<SecurityGroup>| {
                let mut g = cur.ok_or_else(|| Ec2Error::no_group(id))?;
                let list = if egress { &mut g.egress } else { &mut g.ingress };
                for r in &rules {
                    let Some(i) = list.iter().position(|x| x.same(r)) else {
                        return Err(Ec2Error::new(
                            "InvalidPermission.NotFound",
                            "The specified rule does not exist in this security group.",
                        ));
                    };
                    list.remove(i);
                }
                Ok((Some(g), ()))
            })
            .await
    }

    /// Sets (or with `remove`, removes) tags on groups.
    pub async fn tag(&self, scope: &Scope, id: &str, tags: &[Tag], remove: bool) -> Result<(), Ec2Error> {
        self.group(scope, id).await?;
        self.records
            .update(&group_key(scope, id), |cur: Option<SecurityGroup>| {
                let mut g = cur.ok_or_else(|| Ec2Error::no_group(id))?;
                for t in tags {
                    g.tags
                        .retain(|x| x.key != t.key || (remove && !t.value.is_empty() && x.value != t.value));
                    if !remove {
                        g.tags.push(t.clone());
                    }
                }
                Ok((Some(g), ()))
            })
            .await
    }
}

/// A rule as EC2's duplicate message names it.
fn describe(r: &Rule) -> String {
    let peer = match &r.peer {
        Peer::Cidr(c) => c.clone(),
        Peer::Group(g) => g.clone(),
    };
    let proto = if r.protocol == "-1" {
        "ALL".to_string()
    } else {
        r.protocol.to_uppercase()
    };
    format!(
        "peer: {peer}, {proto}, from port: {}, to port: {}, ALLOW",
        r.from_port, r.to_port
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ec2() -> Ec2 {
        let store: Arc<dyn Store> = Arc::new(gantry_store::SqliteStore::in_memory().unwrap());
        Ec2::new(store, Arc::new(crate::SystemClock))
    }

    fn scope() -> Scope {
        Scope {
            account: "123456789012".into(),
            region: "us-east-1".into(),
        }
    }

    fn tcp(port: i64, peer: Peer) -> Rule {
        Rule {
            id: String::new(),
            protocol: "tcp".into(),
            from_port: port,
            to_port: port,
            peer,
            description: None,
        }
    }

    #[tokio::test]
    async fn groups_rules_duplicates_and_dependencies() {
        let (e, s) = (ec2(), scope());
        let default = e.group(&s, &default_group_id(&s)).await.unwrap();
        assert_eq!(default.name, "default");
        assert_eq!(default.ingress[0].peer, Peer::Group(default.id.clone()));
        let web = e.create_group(&s, "web", "web tier", None, vec![]).await.unwrap();
        assert!(web.id.starts_with("sg-") && web.id.len() == 20, "{}", web.id);
        assert_eq!(web.egress[0].peer, Peer::Cidr("0.0.0.0/0".into()));
        let dup = e.create_group(&s, "web", "again", None, vec![]).await.unwrap_err();
        assert_eq!(dup.code, "InvalidGroup.Duplicate");
        let db = e.create_group(&s, "db", "db tier", None, vec![]).await.unwrap();
        // db lets web in on 5432; the same rule twice is refused and adds nothing.
        let added = e
            .authorize(&s, &db.id, false, vec![tcp(5432, Peer::Group(web.id.clone()))])
            .await
            .unwrap();
        assert!(added[0].id.starts_with("sgr-"));
        let again = e
            .authorize(&s, &db.id, false, vec![tcp(5432, Peer::Group(web.id.clone()))])
            .await
            .unwrap_err();
        assert_eq!(again.code, "InvalidPermission.Duplicate");
        assert!(again
            .message
            .contains(&format!("peer: {}, TCP, from port: 5432, to port: 5432, ALLOW", web.id)));
        assert_eq!(e.group(&s, &db.id).await.unwrap().ingress.len(), 1);
        // web is referenced by db's rule: it cannot go; nor can the default group.
        assert_eq!(
            e.delete_group(&s, &web, false).await.unwrap_err().code,
            "DependencyViolation"
        );
        assert_eq!(
            e.delete_group(&s, &default, false).await.unwrap_err().code,
            "CannotDelete"
        );
        assert_eq!(
            e.delete_group(&s, &db, true).await.unwrap_err().code,
            "DependencyViolation"
        );
        e.revoke(&s, &db.id, false, vec![tcp(5432, Peer::Group(web.id.clone()))])
            .await
            .unwrap();
        let gone = e
            .revoke(&s, &db.id, false, vec![tcp(5432, Peer::Group(web.id.clone()))])
            .await
            .unwrap_err();
        assert_eq!(gone.code, "InvalidPermission.NotFound");
        e.delete_group(&s, &web, false).await.unwrap();
        assert_eq!(e.group(&s, &web.id).await.unwrap_err().code, "InvalidGroup.NotFound");
        // A rule naming a group that does not exist.
        let e2 = e
            .authorize(
                &s,
                &db.id,
                false,
                vec![tcp(1, Peer::Group("sg-0000000000000000f".into()))],
            )
            .await;
        assert_eq!(e2.unwrap_err().code, "InvalidGroup.NotFound");
        assert_eq!(e.group(&s, "web").await.unwrap_err().code, "InvalidGroupId.Malformed");
    }

    #[test]
    fn protocols_ports_and_cidrs_as_ec2_checks_them() {
        assert_eq!(normalise_protocol("6").unwrap(), "tcp");
        assert_eq!(normalise_protocol("ALL").unwrap(), "-1");
        assert!(normalise_protocol("gre").is_err());
        assert_eq!(check_ports("tcp", Some(80), Some(80)).unwrap(), (80, 80));
        assert!(check_ports("tcp", Some(90), Some(80)).is_err());
        assert!(check_ports("udp", None, Some(80)).is_err());
        assert_eq!(check_ports("-1", Some(5), None).unwrap(), (-1, -1));
        assert_eq!(check_ports("icmp", Some(8), Some(-1)).unwrap(), (8, -1));
        assert!(check_cidr("10.0.0.0/8").is_ok());
        for bad in ["10.0.0.0", "10.0.0.0/33", "10.0.0/8", "x/1"] {
            assert!(check_cidr(bad).is_err(), "{bad}");
        }
        let s = scope();
        assert_eq!(vpc_id(&s), vpc_id(&s));
        assert!(vpc_id(&s).starts_with("vpc-") && vpc_id(&s).len() == 21);
    }
}
