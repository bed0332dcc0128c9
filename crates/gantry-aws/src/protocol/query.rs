//! The AWS Query protocol, driven by a service model: form parameters (`Name.member.1`,
//! `Tags.entry.1.key`, `Parent.Child`) decoded into a JSON value shaped like the input shape,
//! and an output value encoded as `<ActionResponse><ActionResult>` XML. EC2's dialect too:
//! lists always flattened (`GroupId.1`), members named by queryName or the capitalised
//! locationName, answers without the Result wrapper and errors in `<Response><Errors>`.

use super::model::{Model, Operation, Shape, ShapeRef};
use super::validate::{Problems, MAX_ELEMENTS};
use super::xml::XmlWriter;
use serde_json::{Map, Value};
use std::collections::{BTreeMap, BTreeSet};

/// Parameters the transport consumes: the action, the version and presigned-URL auth.
fn is_envelope(key: &str) -> bool {
    key == "Action" || key == "Version" || key.starts_with("X-Amz-")
}

/// Decodes an operation's parameters. Problems (bad numbers, unknown parameters, violated
/// constraints) are collected and reported together, as AWS reports validation errors.
pub fn decode(model: &Model, op: &Operation, params: &BTreeMap<String, String>) -> Result<Value, Problems> {
    let mut d = Decoder {
        model,
        params,
        used: BTreeSet::new(),
        problems: Problems::default(),
        ec2: model.is_ec2(),
    };
    let input = match &op.input {
        Some(r) => d.structure(model.shape(&r.shape), "", "").unwrap_or_default(),
        None => Map::new(),
    };
    for key in params.keys().filter(|k| !is_envelope(k)) {
        if !d.used.contains(key.as_str()) {
            d.problems.unknown(key);
        }
    }
    d.problems.into_result(Value::Object(input))
}

struct Decoder<'a> {
    model: &'a Model,
    params: &'a BTreeMap<String, String>,
    used: BTreeSet<&'a str>,
    problems: Problems,
    ec2: bool,
}

fn upper_first(s: &str) -> String {
    let mut c = s.chars();
    match c.next() {
        Some(f) => f.to_uppercase().chain(c).collect(),
        None => String::new(),
    }
}

fn join(prefix: &str, name: &str) -> String {
    if prefix.is_empty() {
        name.to_string()
    } else {
        format!("{prefix}.{name}")
    }
}

impl<'a> Decoder<'a> {
    /// The value at `key`, or None when no parameter names it. `path` is the member path
    /// validation errors name.
    fn value(&mut self, r: &ShapeRef, key: &str, path: &str) -> Option<Value> {
        let shape = self.model.shape(&r.shape);
        let v = match shape.kind.as_str() {
            "structure" => self.structure(shape, key, path).map(Value::Object),
            "list" => self.list(shape, r.flattened || shape.flattened, key, path),
            "map" => self.map(shape, r.flattened || shape.flattened, key, path),
            _ => self.scalar(shape, key, path),
        }?;
        self.problems.check(shape, &v, path);
        Some(v)
    }

    fn structure(&mut self, shape: &Shape, key: &str, path: &str) -> Option<Map<String, Value>> {
        let mut out = Map::new();
        for (name, m) in &shape.members {
            let wire = if self.ec2 {
                m.query_name
                    .clone()
                    .or_else(|| m.location_name.as_deref().map(upper_first))
                    .unwrap_or_else(|| name.clone())
            } else {
                m.location_name.clone().unwrap_or_else(|| name.clone())
            };
            let member_path = join(path, &lower_first(name));
            if let Some(v) = self.value(m, &join(key, &wire), &member_path) {
                out.insert(name.clone(), v);
            }
        }
        for name in &shape.required {
            if !out.contains_key(name) && (!out.is_empty() || key.is_empty()) {
                self.problems.missing(&join(path, &lower_first(name)));
            }
        }
        (!out.is_empty()).then_some(out)
    }

    /// The indices present under `prefix.` (`prefix.3.x` -> 3), in order.
    fn indices(&mut self, prefix: &str, path: &str) -> Vec<usize> {
        let start = format!("{prefix}.");
        let mut found = BTreeSet::new();
        for (k, _) in self.params.range(start.clone()..) {
            let Some(rest) = k.strip_prefix(&start) else { break };
            let idx = rest.split('.').next().unwrap_or("");
            match idx.parse::<usize>() {
                Ok(n) if n >= 1 => {
                    found.insert(n);
                }
                _ => {}
            }
        }
        if found.len() > MAX_ELEMENTS {
            self.problems.too_many(path);
            return vec![];
        }
        found.into_iter().collect()
    }

    /// An empty list or map is sent as the bare name with an empty value.
    fn empty_marker(&mut self, key: &'a str) -> bool {
        match self.params.get_key_value(key) {
            Some((k, v)) if v.is_empty() => {
                self.used.insert(k.as_str());
                true
            }
            _ => false,
        }
    }

    fn list(&mut self, shape: &Shape, flattened: bool, key: &str, path: &str) -> Option<Value> {
        let member = shape.member.as_deref().expect("a list has a member");
        let prefix = if self.ec2 {
            key.to_string()
        } else if flattened {
            match &member.location_name {
                Some(n) => join(key.rsplit_once('.').map(|p| p.0).unwrap_or(""), n),
                None => key.to_string(),
            }
        } else {
            join(key, member.location_name.as_deref().unwrap_or("member"))
        };
        let mut items = vec![];
        for i in self.indices(&prefix, path) {
            let item_path = format!("{path}.{i}.member");
            if let Some(v) = self.value(member, &format!("{prefix}.{i}"), &item_path) {
                items.push(v);
            }
        }
        if items.is_empty() {
            let owned = self.params.get_key_value(key).map(|(k, _)| k.as_str());
            return owned.filter(|k| self.empty_marker(k)).map(|_| Value::Array(vec![]));
        }
        Some(Value::Array(items))
    }

    fn map(&mut self, shape: &Shape, flattened: bool, key: &str, path: &str) -> Option<Value> {
        let (kref, vref) = (
            shape.key.as_deref().expect("a map has a key"),
            shape.value.as_deref().expect("a map has a value"),
        );
        let prefix = if flattened { key.to_string() } else { join(key, "entry") };
        let mut out = Map::new();
        for i in self.indices(&prefix, path) {
            let entry = format!("{prefix}.{i}");
            let kname = kref.location_name.as_deref().unwrap_or("key");
            let vname = vref.location_name.as_deref().unwrap_or("value");
            let k = self.value(kref, &join(&entry, kname), &format!("{path}.{i}.key"));
            let v = self.value(vref, &join(&entry, vname), &format!("{path}.{i}.value"));
            match (k, v) {
                (Some(Value::String(k)), Some(v)) => {
                    out.insert(k, v);
                }
                _ => self.problems.missing(&format!("{path}.{i}")),
            }
        }
        if out.is_empty() {
            let owned = self.params.get_key_value(key).map(|(k, _)| k.as_str());
            return owned
                .filter(|k| self.empty_marker(k))
                .map(|_| Value::Object(Map::new()));
        }
        Some(Value::Object(out))
    }

    fn scalar(&mut self, shape: &Shape, key: &str, path: &str) -> Option<Value> {
        let (k, raw) = self.params.get_key_value(key)?;
        self.used.insert(k.as_str());
        let parsed = match shape.kind.as_str() {
            "integer" | "long" => raw.trim().parse::<i64>().ok().map(Value::from),
            "double" | "float" => raw.trim().parse::<f64>().ok().map(Value::from),
            "boolean" => match raw.as_str() {
                "true" => Some(Value::Bool(true)),
                "false" => Some(Value::Bool(false)),
                _ => None,
            },
            "timestamp" => parse_timestamp(raw).map(Value::from),
            _ => Some(Value::String(raw.clone())),
        };
        if parsed.is_none() {
            self.problems.malformed(raw, path, &shape.kind);
        }
        parsed
    }
}

/// ISO 8601 (what Query clients send) or epoch seconds, as epoch seconds.
fn parse_timestamp(raw: &str) -> Option<f64> {
    if let Ok(t) = chrono::DateTime::parse_from_rfc3339(raw) {
        return Some(t.timestamp_millis() as f64 / 1000.0);
    }
    raw.parse::<f64>().ok()
}

fn lower_first(s: &str) -> String {
    let mut c = s.chars();
    match c.next() {
        Some(f) => f.to_lowercase().chain(c).collect(),
        None => String::new(),
    }
}

/// `<{Action}Response xmlns=..><{Action}Result>..</..><ResponseMetadata>..</..></..>`
/// (EC2: `<{Action}Response xmlns=..><requestId>..</..>members..</..>`).
pub fn encode(model: &Model, op: &Operation, output: &Value, request_id: &str) -> String {
    let mut w = XmlWriter::default();
    let root = format!("{}Response", op.name);
    w.open_ns(&root, model.metadata.xml_namespace.as_deref());
    if model.is_ec2() {
        w.leaf("requestId", request_id);
        if let Some(r) = &op.output {
            encode_members(model, model.shape(&r.shape), output, &mut w);
        }
        w.close(&root);
        return w.finish();
    }
    if let Some(r) = &op.output {
        let wrapper = r.result_wrapper.clone().unwrap_or_else(|| format!("{}Result", op.name));
        w.open(&wrapper);
        encode_members(model, model.shape(&r.shape), output, &mut w);
        w.close(&wrapper);
    }
    w.open("ResponseMetadata");
    w.leaf("RequestId", request_id);
    w.close("ResponseMetadata");
    w.close(&root);
    w.finish()
}

/// The Query error envelope; `sender` says whose fault it is.
pub fn encode_error(namespace: Option<&str>, code: &str, message: &str, sender: bool, request_id: &str) -> String {
    let mut w = XmlWriter::default();
    w.open_ns("ErrorResponse", namespace);
    w.open("Error");
    w.leaf("Type", if sender { "Sender" } else { "Receiver" });
    w.leaf("Code", code);
    w.leaf("Message", message);
    w.close("Error");
    w.leaf("RequestId", request_id);
    w.close("ErrorResponse");
    w.finish()
}

/// EC2's error envelope.
pub fn encode_ec2_error(code: &str, message: &str, request_id: &str) -> String {
    let mut w = XmlWriter::default();
    w.open("Response");
    w.open("Errors");
    w.open("Error");
    w.leaf("Code", code);
    w.leaf("Message", message);
    w.close("Error");
    w.close("Errors");
    w.leaf("RequestID", request_id);
    w.close("Response");
    w.finish()
}

fn encode_members(model: &Model, shape: &Shape, v: &Value, w: &mut XmlWriter) {
    let Value::Object(obj) = v else { return };
    for key in obj.keys() {
        debug_assert!(
            shape.members.contains_key(key),
            "{key} is not a member of the output shape"
        );
    }
    for (name, m) in &shape.members {
        let Some(value) = obj.get(name).filter(|v| !v.is_null()) else {
            continue;
        };
        let tag = m.location_name.as_deref().unwrap_or(name);
        let inner = model.shape(&m.shape);
        if inner.kind == "list" && (m.flattened || inner.flattened) {
            let member = inner.member.as_deref().expect("a list has a member");
            let item_tag = member.location_name.as_deref().unwrap_or(tag);
            for item in value.as_array().into_iter().flatten() {
                encode_value(model, member, item_tag, item, w);
            }
        } else {
            encode_value(model, m, tag, value, w);
        }
    }
}

fn encode_value(model: &Model, r: &ShapeRef, tag: &str, v: &Value, w: &mut XmlWriter) {
    let shape = model.shape(&r.shape);
    match shape.kind.as_str() {
        "structure" => {
            w.open(tag);
            encode_members(model, shape, v, w);
            w.close(tag);
        }
        "list" => {
            let member = shape.member.as_deref().expect("a list has a member");
            let item_tag = member.location_name.as_deref().unwrap_or("member");
            w.open(tag);
            for item in v.as_array().into_iter().flatten() {
                encode_value(model, member, item_tag, item, w);
            }
            w.close(tag);
        }
        "map" => {
            let (k, val) = (
                shape.key.as_deref().expect("key"),
                shape.value.as_deref().expect("value"),
            );
            w.open(tag);
            for (key, item) in v.as_object().into_iter().flatten() {
                w.open("entry");
                w.leaf(k.location_name.as_deref().unwrap_or("key"), key);
                encode_value(model, val, val.location_name.as_deref().unwrap_or("value"), item, w);
                w.close("entry");
            }
            w.close(tag);
        }
        "timestamp" => w.leaf(tag, &iso_timestamp(v)),
        _ => w.leaf(tag, &scalar_text(v)),
    }
}

fn scalar_text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// Epoch seconds (how handlers hold times) as ISO 8601 with milliseconds.
fn iso_timestamp(v: &Value) -> String {
    match v {
        Value::Number(n) => {
            let ms = (n.as_f64().unwrap_or(0.0) * 1000.0).round() as i64;
            chrono::DateTime::from_timestamp_millis(ms)
                .unwrap_or_default()
                .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
        }
        other => scalar_text(other),
    }
}
