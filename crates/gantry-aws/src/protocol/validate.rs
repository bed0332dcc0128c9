//! Model constraints (required, length, range, enum) checked on decoded input, reported in
//! AWS's words: "2 validation errors detected: Value null at 'name' failed to satisfy
//! constraint: Member must not be null; ...".

use super::model::Shape;
use serde_json::Value;

/// Most elements a list or map in a request may hold, whatever the model says.
pub const MAX_ELEMENTS: usize = 1000;

#[derive(Debug, Default)]
pub struct Problems(Vec<String>);

impl Problems {
    pub fn missing(&mut self, path: &str) {
        self.0.push(format!(
            "Value null at '{path}' failed to satisfy constraint: Member must not be null"
        ));
    }

    pub fn unknown(&mut self, param: &str) {
        self.0.push(format!("Parameter '{}' is not recognized", shown(param)));
    }

    pub fn too_many(&mut self, path: &str) {
        self.0.push(format!(
            "Value at '{path}' failed to satisfy constraint: Member must have length less than or equal to {MAX_ELEMENTS}"
        ));
    }

    pub fn malformed(&mut self, raw: &str, path: &str, kind: &str) {
        let what = match kind {
            "integer" | "long" => "an integer",
            "double" | "float" => "a number",
            "boolean" => "true or false",
            "timestamp" => "an ISO 8601 timestamp",
            other => other,
        };
        self.0.push(format!(
            "Value '{}' at '{path}' failed to satisfy constraint: Member must be {what}",
            shown(raw)
        ));
    }

    /// The shape's own constraints on a decoded value.
    pub fn check(&mut self, shape: &Shape, v: &Value, path: &str) {
        let (size, what) = match v {
            Value::String(s) => (Some(s.chars().count() as f64), "length"),
            Value::Array(a) => (Some(a.len() as f64), "length"),
            Value::Object(o) if shape.kind == "map" => (Some(o.len() as f64), "length"),
            Value::Number(n) => (n.as_f64(), "value"),
            _ => (None, ""),
        };
        let shown_v = match v {
            Value::String(s) => shown(s),
            Value::Number(n) => n.to_string(),
            _ => String::new(),
        };
        let mut fail = |c: String| {
            self.0.push(format!(
                "Value '{shown_v}' at '{path}' failed to satisfy constraint: Member must {c}"
            ))
        };
        if let Some(size) = size {
            if let Some(min) = shape.min.filter(|m| size < *m) {
                fail(format!("have {what} greater than or equal to {min}"));
            }
            if let Some(max) = shape.max.filter(|m| size > *m) {
                fail(format!("have {what} less than or equal to {max}"));
            }
        }
        if let (Some(allowed), Value::String(s)) = (&shape.allowed, v) {
            if !allowed.contains(s) {
                fail(format!("satisfy enum value set: [{}]", allowed.join(", ")));
            }
        }
    }

    pub fn into_result<T>(self, ok: T) -> Result<T, Problems> {
        if self.0.is_empty() {
            Ok(ok)
        } else {
            Err(self)
        }
    }

    pub fn message(&self) -> String {
        let n = self.0.len();
        let noun = if n == 1 { "error" } else { "errors" };
        format!("{n} validation {noun} detected: {}", self.0.join("; "))
    }
}

/// Long or odd values are cut short in messages rather than echoed whole.
fn shown(s: &str) -> String {
    let cut: String = s.chars().take(256).filter(|c| !c.is_control()).collect();
    if cut.len() < s.len() && s.chars().count() > 256 {
        format!("{cut}...")
    } else {
        cut
    }
}

/// Checks a JSON request body against the operation's input shape: required members present,
/// and each value's constraints (length, range, enum), reported together. Type mismatches and
/// unknown members are left to the handler's typed parse, which names them.
pub fn json_input(model: &super::model::Model, op: &super::model::Operation, v: &Value) -> Result<(), Problems> {
    let mut problems = Problems::default();
    if let Some(input) = &op.input {
        walk(model, &input.shape, v, "", &mut problems);
    }
    problems.into_result(())
}

fn walk(model: &super::model::Model, shape_name: &str, v: &Value, path: &str, problems: &mut Problems) {
    let shape = model.shape(shape_name);
    let at = |name: &str| {
        if path.is_empty() {
            name.to_string()
        } else {
            format!("{path}.{name}")
        }
    };
    if !path.is_empty() {
        problems.check(shape, v, path);
    }
    match (shape.kind.as_str(), v) {
        ("structure", Value::Object(o)) => {
            for r in &shape.required {
                if o.get(r).is_none_or(Value::is_null) {
                    problems.missing(&at(r));
                }
            }
            for (k, m) in &shape.members {
                if let Some(val) = o.get(k).filter(|x| !x.is_null()) {
                    walk(model, &m.shape, val, &at(k), problems);
                }
            }
        }
        ("list", Value::Array(items)) => {
            if items.len() > MAX_ELEMENTS {
                return problems.too_many(path);
            }
            let member = shape.member.as_ref().expect("a list has a member");
            for (i, item) in items.iter().enumerate() {
                walk(
                    model,
                    &member.shape,
                    item,
                    &format!("{path}.{}.member", i + 1),
                    problems,
                );
            }
        }
        ("map", Value::Object(o)) => {
            if o.len() > MAX_ELEMENTS {
                return problems.too_many(path);
            }
            let (key, value) = (shape.key.as_ref(), shape.value.as_ref());
            for (k, val) in o {
                if let Some(key) = key {
                    problems.check(
                        model.shape(&key.shape),
                        &Value::String(k.clone()),
                        &format!("{path}.{k}.key"),
                    );
                }
                if let Some(value) = value {
                    walk(model, &value.shape, val, &format!("{path}.{k}.value"), problems);
                }
            }
        }
        _ => {}
    }
}
