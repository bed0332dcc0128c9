//! Listeners (all of a load balancer's in one record, so a port is taken atomically) and the
//! actions listeners and rules take.

use super::load_balancers::{lb_id, listener_id};
use super::{page, parse, validate_tags, Elb, Named, TagEdit};
use gantry_types::arn::Scope;
use gantry_types::elbv2::{
    Action, ElbError, ForwardConfig, Listener, ListenerCertificate, LoadBalancer, Record, RedirectConfig, Rule,
    Stickiness, Tag, TargetGroup, TargetGroupTuple,
};
use serde::Deserialize;
use serde_json::{json, Value};
use std::collections::{BTreeMap, BTreeSet};

/// Listeners one load balancer may have (ELBv2's quota).
const MAX_LISTENERS: usize = 50;

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase", deny_unknown_fields)]
struct CreateInput {
    load_balancer_arn: String,
    #[serde(default)]
    protocol: Option<String>,
    #[serde(default)]
    port: Option<i64>,
    default_actions: Vec<Action>,
    #[serde(default)]
    tags: Vec<Tag>,
    #[serde(default)]
    certificates: Option<Vec<ListenerCertificate>>,
    #[serde(default)]
    ssl_policy: Option<String>,
    #[serde(default)]
    alpn_policy: Option<Vec<String>>,
}

/// The listener protocols Gantry's data plane serves, by load balancer type.
fn check_listener_protocol(lb: &LoadBalancer, protocol: &str) -> Result<(), ElbError> {
    let ok = match lb.kind.as_str() {
        "network" => protocol == "TCP" || protocol == "TLS",
        _ => protocol == "HTTP" || protocol == "HTTPS",
    };
    if ok {
        return Ok(());
    }
    Err(ElbError::new(
        "UnsupportedProtocolException",
        format!(
            "Protocol '{protocol}' is not supported for a {} load balancer in Gantry: application load balancers take HTTP and HTTPS listeners, network load balancers TCP and TLS.",
            lb.kind
        ),
    ))
}

/// The security policies ELBv2 names. The data plane (rustls) speaks TLS 1.2 and 1.3 only:
/// policies that also allow 1.0 or 1.1 get 1.2 and 1.3; the TLS13-1-3 ones 1.3 only.
pub const SSL_POLICIES: &[&str] = &[
    "ELBSecurityPolicy-2016-08",
    "ELBSecurityPolicy-TLS13-1-2-2021-06",
    "ELBSecurityPolicy-TLS13-1-2-Res-2021-06",
    "ELBSecurityPolicy-TLS13-1-2-Ext1-2021-06",
    "ELBSecurityPolicy-TLS13-1-2-Ext2-2021-06",
    "ELBSecurityPolicy-TLS13-1-3-2021-06",
    "ELBSecurityPolicy-TLS-1-2-2017-01",
    "ELBSecurityPolicy-TLS-1-2-Ext-2018-06",
    "ELBSecurityPolicy-FS-1-2-Res-2020-10",
    "ELBSecurityPolicy-FS-1-2-Res-2019-08",
    "ELBSecurityPolicy-FS-1-2-2019-08",
    "ELBSecurityPolicy-FS-2018-06",
    "ELBSecurityPolicy-TLS-1-1-2017-01",
    "ELBSecurityPolicy-FS-1-1-2019-08",
    "ELBSecurityPolicy-2015-05",
];
const DEFAULT_SSL_POLICY: &str = "ELBSecurityPolicy-2016-08";
const ALPN_POLICIES: &[&str] = &["HTTP1Only", "HTTP2Only", "HTTP2Optional", "HTTP2Preferred", "None"];

/// What a TLS listener is given: certificates, policy, ALPN.
struct TlsSettings {
    certificates: Vec<ListenerCertificate>,
    ssl_policy: Option<String>,
    alpn_policy: Vec<String>,
}

impl Elb {
    /// Checks a listener's TLS settings against its protocol: HTTPS and TLS need exactly one
    /// (default) certificate that ACM holds, a known policy, and (TLS only) an ALPN policy;
    /// other protocols take none of them.
    async fn tls_settings(
        &self,
        scope: &Scope,
        protocol: &str,
        certificates: Option<Vec<ListenerCertificate>>,
        ssl_policy: Option<String>,
        alpn_policy: Option<Vec<String>>,
    ) -> Result<TlsSettings, ElbError> {
        let secure = protocol == "HTTPS" || protocol == "TLS";
        if !secure {
            if certificates.as_ref().is_some_and(|c| !c.is_empty())
                || ssl_policy.is_some()
                || alpn_policy.as_ref().is_some_and(|a| !a.is_empty())
            {
                return Err(ElbError::validation(format!(
                    "Certificates, SslPolicy and AlpnPolicy are only for HTTPS and TLS listeners, not {protocol}"
                )));
            }
            return Ok(TlsSettings {
                certificates: vec![],
                ssl_policy: None,
                alpn_policy: vec![],
            });
        }
        let certs = certificates.unwrap_or_default();
        let cert = match certs.as_slice() {
            [] => return Err(ElbError::validation(format!("A certificate must be specified for {protocol} listeners"))),
            [c] => c,
            _ => {
                return Err(ElbError::new(
                    "TooManyCertificatesException",
                    "Only the default certificate can be given here; Gantry does not serve further (SNI) listener certificates yet",
                ))
            }
        };
        self.acm().get(scope, &cert.certificate_arn).await.map_err(|_| {
            ElbError::new(
                "CertificateNotFoundException",
                format!("Certificate '{}' not found", cert.certificate_arn),
            )
        })?;
        let policy = ssl_policy.unwrap_or_else(|| DEFAULT_SSL_POLICY.to_string());
        if !SSL_POLICIES.contains(&policy.as_str()) {
            return Err(ElbError::new(
                "SSLPolicyNotFoundException",
                format!("SSL policy '{policy}' not found"),
            ));
        }
        let alpn = alpn_policy.unwrap_or_default();
        if !alpn.is_empty() && (protocol != "TLS" || alpn.len() > 1 || !ALPN_POLICIES.contains(&alpn[0].as_str())) {
            return Err(ElbError::validation(format!(
                "ALPN policy {alpn:?} is not valid: TLS listeners take one of {}",
                ALPN_POLICIES.join(", ")
            )));
        }
        Ok(TlsSettings {
            certificates: vec![ListenerCertificate {
                certificate_arn: cert.certificate_arn.clone(),
                is_default: None,
            }],
            ssl_policy: Some(policy),
            alpn_policy: alpn,
        })
    }

    /// The listeners (ARNs) serving this certificate, as default or by SNI.
    pub async fn listeners_using_certificate(&self, scope: &Scope, arn: &str) -> Result<Vec<String>, ElbError> {
        let all: Vec<Vec<Record<Listener>>> = self.list(&Self::key(scope, "listeners/")).await?;
        Ok(all
            .into_iter()
            .flatten()
            .filter(|l| {
                l.item.certificates.iter().any(|c| c.certificate_arn == arn)
                    || l.sni_certificates.iter().any(|c| c == arn)
            })
            .map(|l| l.item.listener_arn)
            .collect())
    }
}

fn check_port(port: i64) -> Result<(), ElbError> {
    if !(1..=65535).contains(&port) {
        return Err(ElbError::validation(format!(
            "Port '{port}' must be between 1 and 65535"
        )));
    }
    Ok(())
}

impl Elb {
    pub(super) fn listeners_key(scope: &Scope, lb_id: &str) -> String {
        Self::key(scope, &format!("listeners/{lb_id}"))
    }

    pub async fn create_listener(&self, scope: &Scope, input: Value) -> Result<Value, ElbError> {
        let input: CreateInput = parse(input)?;
        validate_tags(&input.tags)?;
        let (lb, _) = self.find_lb(scope, &input.load_balancer_arn).await?;
        let protocol = input
            .protocol
            .clone()
            .ok_or_else(|| ElbError::validation("A listener protocol must be specified"))?;
        check_listener_protocol(&lb.item, &protocol)?;
        let port = input
            .port
            .ok_or_else(|| ElbError::validation("A listener port must be specified"))?;
        check_port(port)?;
        let actions = self.check_actions(scope, &lb.item, input.default_actions).await?;
        let tls = self
            .tls_settings(
                scope,
                &protocol,
                input.certificates,
                input.ssl_policy,
                input.alpn_policy,
            )
            .await?;
        let id = Self::new_id();
        let lb_arn = &lb.item.load_balancer_arn;
        let listener = Listener {
            listener_arn: lb_arn.replacen(":loadbalancer/", ":listener/", 1) + "/" + &id,
            load_balancer_arn: lb_arn.clone(),
            port,
            protocol,
            default_actions: actions,
            certificates: tls.certificates,
            ssl_policy: tls.ssl_policy,
            alpn_policy: tls.alpn_policy,
        };
        let default_rule = Record::new(default_rule(&listener), vec![]);
        // The default rule exists before the listener does, so no reader sees one without it.
        self.update::<Vec<Record<Rule>>, _>(&Self::rules_key(scope, &id), |_| {
            Ok((Some(vec![default_rule.clone()]), ()))
        })
        .await?;
        let key = Self::listeners_key(scope, &lb_id(&lb.item));
        let added = self
            .update::<Vec<Record<Listener>>, _>(&key, |cur| {
                let mut all = cur.unwrap_or_default();
                if all.iter().any(|l| l.item.port == port) {
                    return Err(duplicate_port(lb_arn));
                }
                if all.len() >= MAX_LISTENERS {
                    return Err(ElbError::new(
                        "TooManyListenersException",
                        "You've reached the limit on the number of listeners per load balancer",
                    ));
                }
                all.push(Record::new(listener.clone(), input.tags.clone()));
                Ok((Some(all), ()))
            })
            .await;
        if let Err(e) = added {
            self.delete_key(&Self::rules_key(scope, &id)).await?;
            return Err(e);
        }
        Ok(json!({"Listeners": [listener]}))
    }

    /// All listeners of every load balancer (for target group usage).
    pub(super) async fn all_listeners(&self, scope: &Scope) -> Result<Vec<Listener>, ElbError> {
        let all: Vec<Vec<Record<Listener>>> = self.list(&Self::key(scope, "listeners/")).await?;
        Ok(all.into_iter().flatten().map(|r| r.item).collect())
    }

    /// The listener an ARN names and the key of its load balancer's listener record.
    pub(super) async fn find_listener(&self, scope: &Scope, arn: &str) -> Result<(Record<Listener>, String), ElbError> {
        let not_found = || ElbError::new("ListenerNotFoundException", format!("Listener '{arn}' not found"));
        let Some(Named::Listener { lb, .. }) = Self::parse_arn(scope, arn) else {
            return Err(not_found());
        };
        let key = Self::listeners_key(scope, &lb.2);
        let all: Vec<Record<Listener>> = self.load(&key).await?.map(|(l, _)| l).unwrap_or_default();
        let found = all
            .into_iter()
            .find(|l| l.item.listener_arn == arn)
            .ok_or_else(not_found)?;
        Ok((found, key))
    }

    pub async fn describe_listeners(&self, scope: &Scope, input: Value) -> Result<Value, ElbError> {
        #[derive(Deserialize)]
        #[serde(rename_all = "PascalCase", deny_unknown_fields)]
        struct Input {
            #[serde(default)]
            load_balancer_arn: Option<String>,
            #[serde(default)]
            listener_arns: Option<Vec<String>>,
            #[serde(default)]
            marker: Option<String>,
            #[serde(default)]
            page_size: Option<i64>,
        }
        let input: Input = parse(input)?;
        let found: Vec<Listener> = match (&input.load_balancer_arn, &input.listener_arns) {
            (Some(lb), None) => {
                let (lb, _) = self.find_lb(scope, lb).await?;
                let all: Vec<Record<Listener>> = self
                    .load(&Self::listeners_key(scope, &lb_id(&lb.item)))
                    .await?
                    .map(|(l, _)| l)
                    .unwrap_or_default();
                all.into_iter().map(|r| r.item).collect()
            }
            (None, Some(arns)) => {
                let mut out = vec![];
                for arn in arns {
                    out.push(self.find_listener(scope, arn).await?.0.item);
                }
                out
            }
            _ => {
                return Err(ElbError::validation(
                    "You must specify either listener ARNs or a load balancer ARN",
                ))
            }
        };
        let (items, next) = page(
            found,
            |l| format!("{:05}", l.port),
            input.marker.as_deref(),
            input.page_size,
        );
        Ok(json!({"Listeners": items, "NextMarker": next}))
    }

    pub async fn modify_listener(&self, scope: &Scope, input: Value) -> Result<Value, ElbError> {
        #[derive(Deserialize)]
        #[serde(rename_all = "PascalCase", deny_unknown_fields)]
        struct Input {
            listener_arn: String,
            #[serde(default)]
            port: Option<i64>,
            #[serde(default)]
            protocol: Option<String>,
            #[serde(default)]
            default_actions: Option<Vec<Action>>,
            #[serde(default)]
            certificates: Option<Vec<ListenerCertificate>>,
            #[serde(default)]
            ssl_policy: Option<String>,
            #[serde(default)]
            alpn_policy: Option<Vec<String>>,
        }
        let input: Input = parse(input)?;
        let (found, key) = self.find_listener(scope, &input.listener_arn).await?;
        let (lb, _) = self.find_lb(scope, &found.item.load_balancer_arn).await?;
        if let Some(p) = &input.protocol {
            check_listener_protocol(&lb.item, p)?;
        }
        // TLS settings not given are kept while the protocol stays secure.
        let protocol = input.protocol.clone().unwrap_or_else(|| found.item.protocol.clone());
        let secure = protocol == "HTTPS" || protocol == "TLS";
        let old = &found.item;
        let tls = self
            .tls_settings(
                scope,
                &protocol,
                input
                    .certificates
                    .clone()
                    .or_else(|| secure.then(|| old.certificates.clone())),
                input
                    .ssl_policy
                    .clone()
                    .or_else(|| old.ssl_policy.clone().filter(|_| secure)),
                input
                    .alpn_policy
                    .clone()
                    .or_else(|| secure.then(|| old.alpn_policy.clone())),
            )
            .await?;
        if let Some(port) = input.port {
            check_port(port)?;
        }
        let actions = match input.default_actions {
            Some(a) => Some(self.check_actions(scope, &lb.item, a).await?),
            None => None,
        };
        let arn = input.listener_arn.clone();
        let lb_arn = lb.item.load_balancer_arn.clone();
        let updated = self
            .update::<Vec<Record<Listener>>, _>(&key, |cur| {
                let mut all = cur.unwrap_or_default();
                if let Some(port) = input.port {
                    if all.iter().any(|l| l.item.port == port && l.item.listener_arn != arn) {
                        return Err(duplicate_port(&lb_arn));
                    }
                }
                let l = all
                    .iter_mut()
                    .find(|l| l.item.listener_arn == arn)
                    .ok_or_else(|| ElbError::new("ListenerNotFoundException", format!("Listener '{arn}' not found")))?;
                l.item.port = input.port.unwrap_or(l.item.port);
                l.item.protocol = protocol.clone();
                if !secure {
                    l.sni_certificates.clear();
                }
                l.item.certificates = tls.certificates.clone();
                l.item.ssl_policy = tls.ssl_policy.clone();
                l.item.alpn_policy = tls.alpn_policy.clone();
                if let Some(a) = &actions {
                    l.item.default_actions = a.clone();
                }
                let item = l.item.clone();
                Ok((Some(all), item))
            })
            .await?;
        Ok(json!({"Listeners": [updated]}))
    }

    pub async fn delete_listener(&self, scope: &Scope, input: Value) -> Result<Value, ElbError> {
        let arn = super::load_balancers::arn_member(&input, "ListenerArn")?;
        let (_, key) = self.find_listener(scope, &arn).await?;
        self.update::<Vec<Record<Listener>>, _>(&key, |cur| {
            let mut all = cur.unwrap_or_default();
            all.retain(|l| l.item.listener_arn != arn);
            Ok(((!all.is_empty()).then_some(all), ()))
        })
        .await?;
        self.delete_key(&Self::rules_key(scope, &listener_id(&arn))).await?;
        Ok(json!({}))
    }

    pub(super) async fn listener_tags(
        &self,
        scope: &Scope,
        arn: &str,
        edit: TagEdit<'_>,
    ) -> Result<Vec<Tag>, ElbError> {
        let (_, key) = self.find_listener(scope, arn).await?;
        self.update::<Vec<Record<Listener>>, _>(&key, |cur| {
            let mut all = cur.unwrap_or_default();
            let l = all
                .iter_mut()
                .find(|l| l.item.listener_arn == arn)
                .ok_or_else(|| ElbError::new("ListenerNotFoundException", format!("Listener '{arn}' not found")))?;
            l.tags = edit(&l.tags)?;
            let t = l.tags.clone();
            Ok((Some(all), t))
        })
        .await
    }

    /// Which load balancers forward to each target group, from every listener and rule.
    pub(super) async fn tg_usage(&self, scope: &Scope) -> Result<BTreeMap<String, BTreeSet<String>>, ElbError> {
        let mut usage: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        let listeners = self.all_listeners(scope).await?;
        let lb_of: BTreeMap<String, String> = listeners
            .iter()
            .map(|l| (listener_id(&l.listener_arn), l.load_balancer_arn.clone()))
            .collect();
        for l in &listeners {
            for tg in forwarded_groups(&l.default_actions) {
                usage.entry(tg).or_default().insert(l.load_balancer_arn.clone());
            }
        }
        let rules: Vec<Vec<Record<Rule>>> = self.list(&Self::key(scope, "rules/")).await?;
        for r in rules.into_iter().flatten() {
            let lid = r.item.rule_arn.rsplit('/').nth(1).unwrap_or("").to_string();
            let Some(lb) = lb_of.get(&lid) else { continue };
            for tg in forwarded_groups(&r.item.actions) {
                usage.entry(tg).or_default().insert(lb.clone());
            }
        }
        Ok(usage)
    }

    /// Checks actions against the load balancer and normalises them as ELBv2 describes them
    /// (a single-group forward carries both TargetGroupArn and ForwardConfig).
    pub(super) async fn check_actions(
        &self,
        scope: &Scope,
        lb: &LoadBalancer,
        actions: Vec<Action>,
    ) -> Result<Vec<Action>, ElbError> {
        let [action] = <[Action; 1]>::try_from(actions).map_err(|a| {
            ElbError::action(format!(
                "Gantry listeners and rules take exactly one action (forward, redirect or fixed-response), not {}",
                a.len()
            ))
        })?;
        let action = match action.kind.as_str() {
            "forward" => self.check_forward(scope, lb, action).await?,
            "redirect" | "fixed-response" if lb.kind == "network" => {
                return Err(ElbError::action(format!(
                    "Network load balancers support only forward actions, not '{}'",
                    action.kind
                )))
            }
            "redirect" => check_redirect(action)?,
            "fixed-response" => check_fixed_response(action)?,
            other => {
                return Err(ElbError::action(format!(
                    "Action type '{other}' is not supported by Gantry: use forward, redirect or fixed-response"
                )))
            }
        };
        Ok(vec![action])
    }

    async fn check_forward(&self, scope: &Scope, lb: &LoadBalancer, a: Action) -> Result<Action, ElbError> {
        if a.redirect_config.is_some() || a.fixed_response_config.is_some() {
            return Err(ElbError::action(
                "A forward action cannot carry a redirect or fixed-response configuration",
            ));
        }
        let mut fc = a.forward_config.unwrap_or(ForwardConfig {
            target_groups: vec![],
            target_group_stickiness_config: None,
        });
        match (&a.target_group_arn, fc.target_groups.as_slice()) {
            (Some(arn), []) => fc.target_groups.push(TargetGroupTuple {
                target_group_arn: arn.clone(),
                weight: Some(1),
            }),
            (Some(arn), [one]) if &one.target_group_arn == arn => {}
            (Some(_), _) => {
                return Err(ElbError::action(
                    "TargetGroupArn and ForwardConfig must name the same, single target group when both are given",
                ))
            }
            (None, []) => return Err(ElbError::action("A forward action must name a target group")),
            (None, _) => {}
        }
        if fc.target_groups.len() > 5 {
            return Err(ElbError::action("A forward action can name at most 5 target groups"));
        }
        if lb.kind == "network" && fc.target_groups.len() > 1 {
            return Err(ElbError::action(
                "A network load balancer forward action names exactly one target group",
            ));
        }
        let usage = self.tg_usage(scope).await?;
        let mut seen = BTreeSet::new();
        for t in &mut fc.target_groups {
            let w = *t.weight.get_or_insert(1);
            if !(0..=999).contains(&w) {
                return Err(ElbError::validation(format!(
                    "Target group weight '{w}' must be between 0 and 999"
                )));
            }
            if !seen.insert(t.target_group_arn.clone()) {
                return Err(ElbError::action(format!(
                    "Target group '{}' is named twice in one action",
                    t.target_group_arn
                )));
            }
            let (tg, _) = self.find_tg(scope, &t.target_group_arn).await?;
            check_group_fits(lb, &tg.item, usage.get(&t.target_group_arn))?;
        }
        let stick = fc.target_group_stickiness_config.get_or_insert(Stickiness {
            enabled: Some(false),
            duration_seconds: None,
        });
        match (stick.enabled, stick.duration_seconds) {
            (Some(true), None) => {
                return Err(ElbError::validation(
                    "A duration must be specified when target group stickiness is enabled",
                ))
            }
            (Some(true), Some(d)) if !(1..=604_800).contains(&d) => {
                return Err(ElbError::validation(format!(
                    "Target group stickiness duration '{d}' must be between 1 and 604800 seconds"
                )))
            }
            (Some(true), Some(_)) => {}
            _ => {
                stick.enabled = Some(false);
                stick.duration_seconds = None;
            }
        }
        let single = (fc.target_groups.len() == 1).then(|| fc.target_groups[0].target_group_arn.clone());
        Ok(Action {
            kind: "forward".into(),
            target_group_arn: single,
            order: a.order,
            forward_config: Some(fc),
            redirect_config: None,
            fixed_response_config: None,
        })
    }
}

/// A group may serve one load balancer, over a protocol the load balancer's listeners speak.
fn check_group_fits(lb: &LoadBalancer, tg: &TargetGroup, used_by: Option<&BTreeSet<String>>) -> Result<(), ElbError> {
    let want = if lb.kind == "network" { "TCP" } else { "HTTP" };
    if tg.protocol.as_deref() != Some(want) {
        return Err(ElbError::new(
            "IncompatibleProtocolsException",
            format!(
                "The target group '{}' uses protocol {}, which a {} load balancer cannot forward to",
                tg.target_group_arn,
                tg.protocol.as_deref().unwrap_or("none"),
                lb.kind
            ),
        ));
    }
    if used_by.is_some_and(|lbs| lbs.iter().any(|l| l != &lb.load_balancer_arn)) {
        return Err(ElbError::new(
            "TargetGroupAssociationLimitException",
            format!(
                "The following target groups cannot be associated with more than one load balancer: {}",
                tg.target_group_arn
            ),
        ));
    }
    Ok(())
}

fn check_redirect(a: Action) -> Result<Action, ElbError> {
    let r = a
        .redirect_config
        .ok_or_else(|| ElbError::action("A redirect action needs a RedirectConfig"))?;
    if !matches!(r.status_code.as_str(), "HTTP_301" | "HTTP_302") {
        return Err(ElbError::validation(format!(
            "Redirect status code '{}' must be HTTP_301 or HTTP_302",
            r.status_code
        )));
    }
    if let Some(p) = r
        .protocol
        .as_deref()
        .filter(|p| !matches!(*p, "HTTP" | "HTTPS" | "#{protocol}"))
    {
        return Err(ElbError::validation(format!(
            "Redirect protocol '{p}' must be HTTP, HTTPS or #{{protocol}}"
        )));
    }
    if let Some(p) = r
        .port
        .as_deref()
        .filter(|p| *p != "#{port}" && !p.parse::<u16>().is_ok_and(|n| n >= 1))
    {
        return Err(ElbError::validation(format!(
            "Redirect port '{p}' must be between 1 and 65535 or #{{port}}"
        )));
    }
    if r.path.as_deref().is_some_and(|p| !p.starts_with('/')) {
        return Err(ElbError::validation("Redirect path must begin with '/'"));
    }
    let filled = RedirectConfig {
        protocol: Some(r.protocol.unwrap_or_else(|| "#{protocol}".into())),
        port: Some(r.port.unwrap_or_else(|| "#{port}".into())),
        host: Some(r.host.unwrap_or_else(|| "#{host}".into())),
        path: Some(r.path.unwrap_or_else(|| "/#{path}".into())),
        query: Some(r.query.unwrap_or_else(|| "#{query}".into())),
        status_code: r.status_code,
    };
    let unchanged = filled.protocol.as_deref() == Some("#{protocol}")
        && filled.port.as_deref() == Some("#{port}")
        && filled.host.as_deref() == Some("#{host}")
        && filled.path.as_deref() == Some("/#{path}")
        && filled.query.as_deref() == Some("#{query}");
    if unchanged {
        return Err(ElbError::action(
            "The redirect configuration is not valid because it creates a loop.",
        ));
    }
    Ok(Action {
        kind: a.kind,
        target_group_arn: None,
        order: a.order,
        forward_config: None,
        redirect_config: Some(filled),
        fixed_response_config: None,
    })
}

fn check_fixed_response(a: Action) -> Result<Action, ElbError> {
    let f = a
        .fixed_response_config
        .clone()
        .ok_or_else(|| ElbError::action("A fixed-response action needs a FixedResponseConfig"))?;
    let code_ok = f.status_code.len() == 3
        && f.status_code.bytes().all(|b| b.is_ascii_digit())
        && matches!(f.status_code.as_bytes()[0], b'2' | b'4' | b'5');
    if !code_ok {
        return Err(ElbError::validation(format!(
            "Fixed response status code '{}' must be 2XX, 4XX or 5XX",
            f.status_code
        )));
    }
    const TYPES: &[&str] = &[
        "text/plain",
        "text/css",
        "text/html",
        "application/javascript",
        "application/json",
    ];
    if let Some(t) = f.content_type.as_deref().filter(|t| !TYPES.contains(t)) {
        return Err(ElbError::validation(format!(
            "Content type '{t}' must be one of: {}",
            TYPES.join(", ")
        )));
    }
    if f.message_body.as_deref().is_some_and(|b| b.len() > 1024) {
        return Err(ElbError::validation(
            "A fixed response message body can be at most 1024 characters",
        ));
    }
    if a.forward_config.is_some() || a.redirect_config.is_some() || a.target_group_arn.is_some() {
        return Err(ElbError::action(
            "A fixed-response action cannot carry a target group or redirect",
        ));
    }
    Ok(a)
}

/// Target group ARNs the actions forward to.
pub fn forwarded_groups(actions: &[Action]) -> Vec<String> {
    actions
        .iter()
        .flat_map(|a| {
            let mut out: Vec<String> = a.target_group_arn.iter().cloned().collect();
            if let Some(fc) = &a.forward_config {
                out.extend(fc.target_groups.iter().map(|t| t.target_group_arn.clone()));
            }
            out
        })
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect()
}

/// A listener's default rule, whose actions are the listener's default actions.
pub(super) fn default_rule(l: &Listener) -> Rule {
    Rule {
        rule_arn: l.listener_arn.replacen(":listener/", ":listener-rule/", 1) + "/" + &super::Elb::new_id(),
        priority: "default".into(),
        conditions: vec![],
        actions: l.default_actions.clone(),
        is_default: true,
    }
}

fn duplicate_port(lb_arn: &str) -> ElbError {
    ElbError::new(
        "DuplicateListenerException",
        format!("A listener already exists on this port for this load balancer '{lb_arn}'"),
    )
}

/// Further certificates one listener may carry (ALB's default quota, less the default).
const MAX_SNI_CERTIFICATES: usize = 25;

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase", deny_unknown_fields)]
struct ListenerCertificatesInput {
    listener_arn: String,
    certificates: Vec<ListenerCertificate>,
}

impl Elb {
    /// AddListenerCertificates: certificates served to clients whose SNI names them.
    pub async fn add_listener_certificates(&self, scope: &Scope, input: Value) -> Result<Value, ElbError> {
        let input: ListenerCertificatesInput = parse(input)?;
        for c in &input.certificates {
            self.acm().get(scope, &c.certificate_arn).await.map_err(|_| {
                ElbError::new(
                    "CertificateNotFoundException",
                    format!("Certificate '{}' not found", c.certificate_arn),
                )
            })?;
        }
        let added: Vec<String> = input.certificates.iter().map(|c| c.certificate_arn.clone()).collect();
        self.edit_sni(scope, &input.listener_arn, |l, sni| {
            for a in &added {
                if !sni.contains(a) && l.certificates.iter().all(|c| &c.certificate_arn != a) {
                    sni.push(a.clone());
                }
            }
            if sni.len() > MAX_SNI_CERTIFICATES {
                return Err(ElbError::new(
                    "TooManyCertificatesException",
                    format!("A listener can have at most {MAX_SNI_CERTIFICATES} certificates besides its default"),
                ));
            }
            Ok(())
        })
        .await?;
        let out: Vec<Value> = added
            .iter()
            .map(|a| json!({"CertificateArn": a, "IsDefault": false}))
            .collect();
        Ok(json!({ "Certificates": out }))
    }

    pub async fn remove_listener_certificates(&self, scope: &Scope, input: Value) -> Result<Value, ElbError> {
        let input: ListenerCertificatesInput = parse(input)?;
        let gone: Vec<String> = input.certificates.iter().map(|c| c.certificate_arn.clone()).collect();
        self.edit_sni(scope, &input.listener_arn, |l, sni| {
            if l.certificates.iter().any(|c| gone.contains(&c.certificate_arn)) {
                return Err(ElbError::new(
                    "OperationNotPermittedException",
                    "The default certificate cannot be removed; modify the listener to change it",
                ));
            }
            sni.retain(|a| !gone.contains(a));
            Ok(())
        })
        .await?;
        Ok(json!({}))
    }

    pub async fn describe_listener_certificates(&self, scope: &Scope, input: Value) -> Result<Value, ElbError> {
        #[derive(Deserialize)]
        #[serde(rename_all = "PascalCase", deny_unknown_fields)]
        struct Input {
            listener_arn: String,
            #[serde(default)]
            marker: Option<String>,
            #[serde(default)]
            page_size: Option<i64>,
        }
        let input: Input = parse(input)?;
        let (found, _) = self.find_listener(scope, &input.listener_arn).await?;
        let mut all: Vec<(String, bool)> = found
            .item
            .certificates
            .iter()
            .map(|c| (c.certificate_arn.clone(), true))
            .collect();
        all.extend(found.sni_certificates.iter().map(|a| (a.clone(), false)));
        let (items, next) = page(all, |(a, _)| a.clone(), input.marker.as_deref(), input.page_size);
        let out: Vec<Value> = items
            .iter()
            .map(|(a, d)| json!({"CertificateArn": a, "IsDefault": d}))
            .collect();
        Ok(json!({"Certificates": out, "NextMarker": next}))
    }

    /// Edits a secure listener's SNI certificates in its load balancer's listener record.
    async fn edit_sni(
        &self,
        scope: &Scope,
        arn: &str,
        f: impl Fn(&Listener, &mut Vec<String>) -> Result<(), ElbError> + Send,
    ) -> Result<(), ElbError> {
        let (found, key) = self.find_listener(scope, arn).await?;
        if !matches!(found.item.protocol.as_str(), "HTTPS" | "TLS") {
            return Err(ElbError::validation(format!(
                "Listener '{arn}' is not an HTTPS or TLS listener"
            )));
        }
        self.update::<Vec<Record<Listener>>, _>(&key, |cur| {
            let mut all = cur.unwrap_or_default();
            let l = all
                .iter_mut()
                .find(|l| l.item.listener_arn == arn)
                .ok_or_else(|| ElbError::new("ListenerNotFoundException", format!("Listener '{arn}' not found")))?;
            f(&l.item, &mut l.sni_certificates)?;
            Ok((Some(all), ()))
        })
        .await
    }
}
