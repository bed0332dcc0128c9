//! Listener rules: conditions, priorities (unique per listener, swapped atomically by
//! SetRulePriorities), and the default rule, whose actions are the listener's.

use super::listeners::default_rule;
use super::load_balancers::arn_member;
use super::{page, parse, validate_tags, Elb, Named, TagEdit};
use gantry_types::arn::Scope;
use gantry_types::elbv2::{Action, ElbError, Record, Rule, RuleCondition, Tag, Values};
use serde::Deserialize;
use serde_json::{json, Value};
use std::collections::BTreeMap;

/// Rules one listener may have besides its default (ELBv2's quota).
const MAX_RULES: usize = 100;
/// Condition values one rule may hold in all (ELBv2's quota).
const MAX_CONDITION_VALUES: usize = 5;

fn rule_not_found(arn: &str) -> ElbError {
    ElbError::new("RuleNotFoundException", format!("Rule '{arn}' not found"))
}

fn check_priority(p: i64) -> Result<(), ElbError> {
    if !(1..=50000).contains(&p) {
        return Err(ElbError::validation(format!(
            "Priority '{p}' must be between 1 and 50000"
        )));
    }
    Ok(())
}

/// Checks conditions and normalises them as ELBv2 describes them (host-header and
/// path-pattern carry both Values and their config).
pub fn check_conditions(conditions: Vec<RuleCondition>) -> Result<Vec<RuleCondition>, ElbError> {
    if conditions.is_empty() {
        return Err(ElbError::validation("A rule must have at least one condition"));
    }
    let mut once = BTreeMap::new();
    let mut total = 0;
    let mut out = vec![];
    for c in conditions {
        let c = normalise(c)?;
        let field = c.field.clone().unwrap_or_default();
        let n = condition_values(&c);
        if n == 0 {
            return Err(ElbError::validation(format!(
                "A '{field}' condition must have at least one value"
            )));
        }
        total += n;
        if !matches!(field.as_str(), "http-header" | "query-string") && once.insert(field.clone(), ()).is_some() {
            return Err(ElbError::validation(format!(
                "A rule can only have one '{field}' condition"
            )));
        }
        out.push(c);
    }
    if total > MAX_CONDITION_VALUES {
        return Err(ElbError::new(
            "TooManyConditionValuesException",
            format!("A rule can have at most {MAX_CONDITION_VALUES} condition values, not {total}"),
        ));
    }
    Ok(out)
}

fn condition_values(c: &RuleCondition) -> usize {
    let v = |x: &Option<Values>| x.as_ref().map(|v| v.values.len()).unwrap_or(0);
    v(&c.host_header_config)
        + v(&c.path_pattern_config)
        + v(&c.http_request_method_config)
        + v(&c.source_ip_config)
        + c.http_header_config.as_ref().map(|h| h.values.len()).unwrap_or(0)
        + c.query_string_config.as_ref().map(|q| q.values.len()).unwrap_or(0)
}

fn normalise(mut c: RuleCondition) -> Result<RuleCondition, ElbError> {
    let field = c
        .field
        .clone()
        .ok_or_else(|| ElbError::validation("A condition must name its Field"))?;
    let bad = |m: String| Err(ElbError::validation(m));
    let legacy = c.values.take();
    let config = match field.as_str() {
        "host-header" => &mut c.host_header_config,
        "path-pattern" => &mut c.path_pattern_config,
        "http-request-method" => &mut c.http_request_method_config,
        "source-ip" => &mut c.source_ip_config,
        "http-header" | "query-string" => {
            if legacy.is_some() {
                return bad(format!("A '{field}' condition takes its values in its configuration, not in Values"));
            }
            return check_header_or_query(c, &field);
        }
        other => {
            return bad(format!(
                "Condition field '{other}' must be one of host-header, path-pattern, http-header, http-request-method, query-string, source-ip"
            ))
        }
    };
    match (legacy, config.as_ref()) {
        (Some(v), None) => *config = Some(Values { values: v }),
        (Some(v), Some(cfg)) if v != cfg.values => {
            return bad(format!(
                "The Values and the configuration of a '{field}' condition must agree"
            ))
        }
        (None, None) => return bad(format!("A '{field}' condition needs its configuration")),
        _ => {}
    }
    let values = config.as_ref().map(|v| v.values.clone()).unwrap_or_default();
    for v in &values {
        check_value(&field, v)?;
    }
    if matches!(field.as_str(), "host-header" | "path-pattern") {
        c.values = Some(values);
    }
    Ok(c)
}

fn check_value(field: &str, v: &str) -> Result<(), ElbError> {
    let bad = || {
        Err(ElbError::validation(format!(
            "Condition value '{v}' is not valid for '{field}'"
        )))
    };
    let ok = match field {
        "host-header" => {
            !v.is_empty() && v.len() <= 128 && v.bytes().all(|b| b.is_ascii_alphanumeric() || b"-.*?".contains(&b))
        }
        "path-pattern" => !v.is_empty() && v.len() <= 128 && v.bytes().all(|b| b.is_ascii_graphic()),
        "http-request-method" => {
            !v.is_empty() && v.len() <= 40 && v.bytes().all(|b| b.is_ascii_uppercase() || b == b'_' || b == b'-')
        }
        "source-ip" => parse_cidr(v).is_some(),
        _ => true,
    };
    if ok {
        Ok(())
    } else {
        bad()
    }
}

/// An IPv4 or IPv6 CIDR block: (address, prefix length).
pub fn parse_cidr(v: &str) -> Option<(std::net::IpAddr, u8)> {
    let (addr, len) = v.split_once('/')?;
    let addr: std::net::IpAddr = addr.parse().ok()?;
    let len: u8 = len.parse().ok()?;
    let max = if addr.is_ipv4() { 32 } else { 128 };
    (len <= max).then_some((addr, len))
}

fn check_header_or_query(c: RuleCondition, field: &str) -> Result<RuleCondition, ElbError> {
    if field == "http-header" {
        let h = c
            .http_header_config
            .as_ref()
            .ok_or_else(|| ElbError::validation("An 'http-header' condition needs HttpHeaderConfig"))?;
        let name_ok = !h.http_header_name.is_empty()
            && h.http_header_name.len() <= 40
            && h.http_header_name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_".contains(&b));
        if !name_ok {
            return Err(ElbError::validation(format!(
                "Header name '{}' is not valid",
                h.http_header_name
            )));
        }
        if h.values.iter().any(|v| v.is_empty() || v.len() > 128) {
            return Err(ElbError::validation("Header values must be 1-128 characters"));
        }
    } else {
        let q = c
            .query_string_config
            .as_ref()
            .ok_or_else(|| ElbError::validation("A 'query-string' condition needs QueryStringConfig"))?;
        if q.values.iter().any(|kv| kv.value.is_empty() || kv.value.len() > 128) {
            return Err(ElbError::validation("Query string values must be 1-128 characters"));
        }
    }
    Ok(c)
}

impl Elb {
    pub(super) fn rules_key(scope: &Scope, listener_id: &str) -> String {
        Self::key(scope, &format!("rules/{listener_id}"))
    }

    pub async fn create_rule(&self, scope: &Scope, input: Value) -> Result<Value, ElbError> {
        #[derive(Deserialize)]
        #[serde(rename_all = "PascalCase", deny_unknown_fields)]
        struct Input {
            listener_arn: String,
            conditions: Vec<RuleCondition>,
            priority: i64,
            actions: Vec<Action>,
            #[serde(default)]
            tags: Vec<Tag>,
        }
        let input: Input = parse(input)?;
        validate_tags(&input.tags)?;
        check_priority(input.priority)?;
        let (listener, _) = self.find_listener(scope, &input.listener_arn).await?;
        let (lb, _) = self.find_lb(scope, &listener.item.load_balancer_arn).await?;
        if lb.item.kind == "network" {
            return Err(ElbError::invalid_config(
                "Network load balancer listeners do not have rules",
            ));
        }
        let conditions = check_conditions(input.conditions)?;
        let actions = self.check_actions(scope, &lb.item, input.actions).await?;
        let rule = Rule {
            rule_arn: default_rule(&listener.item).rule_arn,
            priority: input.priority.to_string(),
            conditions,
            actions,
            is_default: false,
        };
        let key = Self::rules_key(scope, &super::load_balancers::listener_id(&input.listener_arn));
        let record = Record::new(rule.clone(), input.tags);
        self.update::<Vec<Record<Rule>>, _>(&key, |cur| {
            let mut all = cur.ok_or_else(|| {
                ElbError::new(
                    "ListenerNotFoundException",
                    format!("Listener '{}' not found", input.listener_arn),
                )
            })?;
            if all.iter().any(|r| r.item.priority == rule.priority) {
                return Err(ElbError::new(
                    "PriorityInUseException",
                    format!("Priority '{}' is currently in use", rule.priority),
                ));
            }
            if all.len() > MAX_RULES {
                return Err(ElbError::new(
                    "TooManyRulesException",
                    "You've reached the limit on the number of rules per listener",
                ));
            }
            all.push(record.clone());
            Ok((Some(all), ()))
        })
        .await?;
        Ok(json!({"Rules": [rule]}))
    }

    /// The rules of a listener, the default rule's actions filled in from the listener.
    async fn listener_rules(&self, scope: &Scope, listener_arn: &str) -> Result<Vec<Record<Rule>>, ElbError> {
        let (listener, _) = self.find_listener(scope, listener_arn).await?;
        let key = Self::rules_key(scope, &super::load_balancers::listener_id(listener_arn));
        let mut rules: Vec<Record<Rule>> = self.load(&key).await?.map(|(r, _)| r).unwrap_or_default();
        for r in &mut rules {
            if r.item.is_default {
                r.item.actions = listener.item.default_actions.clone();
            }
        }
        Ok(rules)
    }

    fn listener_of_rule(scope: &Scope, arn: &str) -> Result<String, ElbError> {
        match Self::parse_arn(scope, arn) {
            Some(Named::Rule { lb, listener, .. }) => Ok(Self::arn(
                scope,
                &format!("listener/{}/{}/{}/{listener}", lb.0, lb.1, lb.2),
            )),
            _ => Err(rule_not_found(arn)),
        }
    }

    async fn find_rule(&self, scope: &Scope, arn: &str) -> Result<(Record<Rule>, String), ElbError> {
        let listener = Self::listener_of_rule(scope, arn)?;
        let rules = self
            .listener_rules(scope, &listener)
            .await
            .map_err(|_| rule_not_found(arn))?;
        let rule = rules
            .into_iter()
            .find(|r| r.item.rule_arn == arn)
            .ok_or_else(|| rule_not_found(arn))?;
        Ok((rule, listener))
    }

    pub async fn describe_rules(&self, scope: &Scope, input: Value) -> Result<Value, ElbError> {
        #[derive(Deserialize)]
        #[serde(rename_all = "PascalCase", deny_unknown_fields)]
        struct Input {
            #[serde(default)]
            listener_arn: Option<String>,
            #[serde(default)]
            rule_arns: Option<Vec<String>>,
            #[serde(default)]
            marker: Option<String>,
            #[serde(default)]
            page_size: Option<i64>,
        }
        let input: Input = parse(input)?;
        let rules: Vec<Rule> = match (&input.listener_arn, &input.rule_arns) {
            (Some(l), None) => self
                .listener_rules(scope, l)
                .await?
                .into_iter()
                .map(|r| r.item)
                .collect(),
            (None, Some(arns)) => {
                let mut out = vec![];
                for arn in arns {
                    out.push(self.find_rule(scope, arn).await?.0.item);
                }
                out
            }
            _ => {
                return Err(ElbError::validation(
                    "You must specify either listener ARN or rule ARNs",
                ))
            }
        };
        // Priority order, the default rule last.
        let order = |r: &Rule| match r.priority.parse::<u32>() {
            Ok(p) => format!("{p:05}"),
            Err(_) => "99999".into(),
        };
        let (items, next) = page(rules, order, input.marker.as_deref(), input.page_size);
        Ok(json!({"Rules": items, "NextMarker": next}))
    }

    pub async fn modify_rule(&self, scope: &Scope, input: Value) -> Result<Value, ElbError> {
        #[derive(Deserialize)]
        #[serde(rename_all = "PascalCase", deny_unknown_fields)]
        struct Input {
            rule_arn: String,
            #[serde(default)]
            conditions: Option<Vec<RuleCondition>>,
            #[serde(default)]
            actions: Option<Vec<Action>>,
        }
        let input: Input = parse(input)?;
        let (rule, listener_arn) = self.find_rule(scope, &input.rule_arn).await?;
        let (listener, _) = self.find_listener(scope, &listener_arn).await?;
        let (lb, _) = self.find_lb(scope, &listener.item.load_balancer_arn).await?;
        let actions = match input.actions {
            Some(a) => Some(self.check_actions(scope, &lb.item, a).await?),
            None => None,
        };
        if rule.item.is_default {
            if input.conditions.is_some() {
                return Err(ElbError::new(
                    "OperationNotPermittedException",
                    "A default rule cannot have conditions",
                ));
            }
            let mut modify = json!({"ListenerArn": listener_arn});
            if let Some(a) = actions {
                modify["DefaultActions"] = serde_json::to_value(a).expect("json");
            }
            self.modify_listener(scope, modify).await?;
            let (rule, _) = self.find_rule(scope, &input.rule_arn).await?;
            return Ok(json!({"Rules": [rule.item]}));
        }
        let conditions = match input.conditions {
            Some(c) => Some(check_conditions(c)?),
            None => None,
        };
        let key = Self::rules_key(scope, &super::load_balancers::listener_id(&listener_arn));
        let arn = input.rule_arn.clone();
        let updated = self
            .update::<Vec<Record<Rule>>, _>(&key, |cur| {
                let mut all = cur.unwrap_or_default();
                let r = all
                    .iter_mut()
                    .find(|r| r.item.rule_arn == arn)
                    .ok_or_else(|| rule_not_found(&arn))?;
                if let Some(c) = &conditions {
                    r.item.conditions = c.clone();
                }
                if let Some(a) = &actions {
                    r.item.actions = a.clone();
                }
                let item = r.item.clone();
                Ok((Some(all), item))
            })
            .await?;
        Ok(json!({"Rules": [updated]}))
    }

    pub async fn delete_rule(&self, scope: &Scope, input: Value) -> Result<Value, ElbError> {
        let arn = arn_member(&input, "RuleArn")?;
        let (rule, listener_arn) = self.find_rule(scope, &arn).await?;
        if rule.item.is_default {
            return Err(ElbError::new(
                "OperationNotPermittedException",
                format!("Default rule '{arn}' cannot be deleted"),
            ));
        }
        let key = Self::rules_key(scope, &super::load_balancers::listener_id(&listener_arn));
        self.update::<Vec<Record<Rule>>, _>(&key, |cur| {
            let mut all = cur.unwrap_or_default();
            all.retain(|r| r.item.rule_arn != arn);
            Ok((Some(all), ()))
        })
        .await?;
        Ok(json!({}))
    }

    pub async fn set_rule_priorities(&self, scope: &Scope, input: Value) -> Result<Value, ElbError> {
        #[derive(Deserialize)]
        #[serde(rename_all = "PascalCase", deny_unknown_fields)]
        struct Pair {
            rule_arn: String,
            priority: i64,
        }
        #[derive(Deserialize)]
        #[serde(rename_all = "PascalCase", deny_unknown_fields)]
        struct Input {
            rule_priorities: Vec<Pair>,
        }
        let input: Input = parse(input)?;
        let Some(first) = input.rule_priorities.first() else {
            return Err(ElbError::validation("At least one rule priority must be specified"));
        };
        let listener_arn = Self::listener_of_rule(scope, &first.rule_arn)?;
        let mut wanted = BTreeMap::new();
        for p in &input.rule_priorities {
            check_priority(p.priority)?;
            if Self::listener_of_rule(scope, &p.rule_arn)? != listener_arn {
                return Err(ElbError::validation("All rules must belong to the same listener"));
            }
            if wanted.insert(p.rule_arn.clone(), p.priority.to_string()).is_some() {
                return Err(ElbError::validation(format!(
                    "Rule '{}' is given more than once",
                    p.rule_arn
                )));
            }
        }
        self.find_listener(scope, &listener_arn).await?;
        let key = Self::rules_key(scope, &super::load_balancers::listener_id(&listener_arn));
        let changed = self
            .update::<Vec<Record<Rule>>, _>(&key, |cur| {
                let mut all = cur.unwrap_or_default();
                for (arn, p) in &wanted {
                    let r = all
                        .iter_mut()
                        .find(|r| &r.item.rule_arn == arn)
                        .ok_or_else(|| rule_not_found(arn))?;
                    if r.item.is_default {
                        return Err(ElbError::new(
                            "OperationNotPermittedException",
                            format!("The priority of default rule '{arn}' cannot be changed"),
                        ));
                    }
                    r.item.priority = p.clone();
                }
                let mut seen = BTreeMap::new();
                for r in &all {
                    if seen.insert(r.item.priority.clone(), ()).is_some() {
                        return Err(ElbError::new(
                            "PriorityInUseException",
                            format!("Priority '{}' is currently in use", r.item.priority),
                        ));
                    }
                }
                let changed: Vec<Rule> = all
                    .iter()
                    .filter(|r| wanted.contains_key(&r.item.rule_arn))
                    .map(|r| r.item.clone())
                    .collect();
                Ok((Some(all), changed))
            })
            .await?;
        Ok(json!({"Rules": changed}))
    }

    pub(super) async fn rule_tags(&self, scope: &Scope, arn: &str, edit: TagEdit<'_>) -> Result<Vec<Tag>, ElbError> {
        let (_, listener_arn) = self.find_rule(scope, arn).await?;
        let key = Self::rules_key(scope, &super::load_balancers::listener_id(&listener_arn));
        self.update::<Vec<Record<Rule>>, _>(&key, |cur| {
            let mut all = cur.unwrap_or_default();
            let r = all
                .iter_mut()
                .find(|r| r.item.rule_arn == arn)
                .ok_or_else(|| rule_not_found(arn))?;
            r.tags = edit(&r.tags)?;
            let t = r.tags.clone();
            Ok((Some(all), t))
        })
        .await
    }
}
