//! Each document's JSON Schema (2020-12), generated from its Rust type, and
//! the check of a JSON value against it before the value is decoded.
//!
//! The check covers the keywords schemars generates for serde types
//! (`type`, `properties`, `required`, `additionalProperties`, `items`,
//! `prefixItems`, `enum`, `const`, numeric and length bounds, `$ref` into
//! `$defs`, `allOf`/`anyOf`/`oneOf`/`not`); `format` and other annotations
//! are not assertions, as in 2020-12 by default. It is written here rather
//! than taken from a validator crate to keep the crate's dependency tree
//! within its reuse budget (a full validator brings some forty crates); the
//! tests check it against the `jsonschema` crate on fuzzed documents.

use std::sync::Arc;

use serde_json::{Map, Value};

/// One way a document breaks its schema.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    /// Where, as a JSON Pointer into the document (`/log_level`; empty for
    /// the document itself).
    pub pointer: String,
    /// What is wrong there.
    pub message: String,
}

impl std::fmt::Display for Violation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let pointer = if self.pointer.is_empty() { "(document)" } else { &self.pointer };
        write!(f, "{pointer}: {}", self.message)
    }
}

/// A document type's schema.
pub(crate) struct Shape {
    schema: Arc<Value>,
}

/// A numeric keyword, whether a value holds against its limit, and what a
/// failure says.
type Bound = (&'static str, fn(f64, f64) -> bool, &'static str);

/// At most this many violations are reported for one value.
const MAX_VIOLATIONS: usize = 20;
/// `$ref` chains deeper than this are refused rather than followed.
const MAX_DEPTH: usize = 64;

impl Shape {
    /// The schema of `T`.
    pub(crate) fn of<T: schemars::JsonSchema>() -> Result<Self, String> {
        let schema = serde_json::to_value(schemars::schema_for!(T)).map_err(|err| err.to_string())?;
        Ok(Self { schema: Arc::new(schema) })
    }

    /// The schema, as published.
    pub(crate) fn schema(&self) -> &Arc<Value> {
        &self.schema
    }

    /// Every way `value` breaks the schema (the first 20), empty when it
    /// conforms.
    pub(crate) fn check(&self, value: &Value) -> Vec<Violation> {
        let mut out = Vec::new();
        Check { root: &self.schema, out: &mut out }.at(&self.schema, value, "", 0);
        out.truncate(MAX_VIOLATIONS);
        out
    }
}

struct Check<'a> {
    root: &'a Value,
    out: &'a mut Vec<Violation>,
}

impl Check<'_> {
    fn fail(&mut self, pointer: &str, message: String) {
        self.out.push(Violation { pointer: pointer.to_owned(), message: keel_core::clip(&message).into_owned() });
    }

    /// Whether `value` conforms to `schema`, without reporting.
    fn conforms(&self, schema: &Value, value: &Value, depth: usize) -> bool {
        let mut scratch = Vec::new();
        Check { root: self.root, out: &mut scratch }.at(schema, value, "", depth);
        scratch.is_empty()
    }

    fn at(&mut self, schema: &Value, value: &Value, pointer: &str, depth: usize) {
        let rules = match schema {
            Value::Bool(true) => return,
            Value::Bool(false) => return self.fail(pointer, "no value is allowed here".into()),
            Value::Object(rules) => rules,
            _ => return,
        };
        if depth > MAX_DEPTH {
            return self.fail(pointer, "the schema nests too deeply".into());
        }
        if let Some(target) = rules.get("$ref").and_then(Value::as_str) {
            match target.strip_prefix('#').and_then(|p| self.root.pointer(p)) {
                Some(referenced) => self.at(referenced, value, pointer, depth + 1),
                None => self.fail(pointer, format!("unresolvable reference {target}")),
            }
        }
        if let Some(types) = rules.get("type")
            && !type_matches(types, value)
        {
            return self.fail(pointer, format!("{} is not of type {types}", shown(value)));
        }
        if let Some(allowed) = rules.get("enum").and_then(Value::as_array)
            && !allowed.iter().any(|a| equal(a, value))
        {
            self.fail(pointer, format!("{} is not one of {}", shown(value), Value::Array(allowed.clone())));
        }
        if let Some(constant) = rules.get("const")
            && !equal(constant, value)
        {
            self.fail(pointer, format!("{constant} was expected"));
        }
        self.bounds(rules, value, pointer);
        match value {
            Value::Object(fields) => self.object(rules, fields, pointer, depth),
            Value::Array(items) => self.array(rules, items, pointer, depth),
            _ => {}
        }
        for branch in rules.get("allOf").and_then(Value::as_array).into_iter().flatten() {
            self.at(branch, value, pointer, depth + 1);
        }
        if let Some(branches) = rules.get("anyOf").and_then(Value::as_array)
            && !branches.iter().any(|b| self.conforms(b, value, depth + 1))
        {
            self.fail(pointer, format!("{} is not valid under any of the allowed shapes", shown(value)));
        }
        if let Some(branches) = rules.get("oneOf").and_then(Value::as_array) {
            let matching = branches.iter().filter(|b| self.conforms(b, value, depth + 1)).count();
            if matching != 1 {
                self.fail(
                    pointer,
                    format!("{} is valid under {matching} of the shapes, not exactly one", shown(value)),
                );
            }
        }
        if let Some(negated) = rules.get("not")
            && self.conforms(negated, value, depth + 1)
        {
            self.fail(pointer, format!("{} is not allowed", shown(value)));
        }
    }

    fn bounds(&mut self, rules: &Map<String, Value>, value: &Value, pointer: &str) {
        let bound = |key: &str| rules.get(key).and_then(Value::as_f64);
        if let Some(number) = value.as_f64() {
            let checks: [Bound; 4] = [
                ("minimum", |v, b| v >= b, "less than the minimum of"),
                ("maximum", |v, b| v <= b, "greater than the maximum of"),
                ("exclusiveMinimum", |v, b| v > b, "less than or equal to the exclusive minimum of"),
                ("exclusiveMaximum", |v, b| v < b, "greater than or equal to the exclusive maximum of"),
            ];
            for (key, holds, says) in checks {
                if let Some(limit) = bound(key)
                    && !holds(number, limit)
                {
                    self.fail(pointer, format!("{value} is {says} {}", rules[key]));
                }
            }
        }
        let length = match value {
            Value::String(text) => Some((text.chars().count(), "minLength", "maxLength", "characters")),
            Value::Array(items) => Some((items.len(), "minItems", "maxItems", "items")),
            Value::Object(fields) => Some((fields.len(), "minProperties", "maxProperties", "properties")),
            _ => None,
        };
        if let Some((len, min, max, unit)) = length {
            if bound(min).is_some_and(|m| (len as f64) < m) {
                self.fail(pointer, format!("{} has fewer than {} {unit}", shown(value), rules[min]));
            }
            if bound(max).is_some_and(|m| (len as f64) > m) {
                self.fail(pointer, format!("{} has more than {} {unit}", shown(value), rules[max]));
            }
        }
    }

    fn object(&mut self, rules: &Map<String, Value>, fields: &Map<String, Value>, pointer: &str, depth: usize) {
        for name in rules.get("required").and_then(Value::as_array).into_iter().flatten().filter_map(Value::as_str) {
            if !fields.contains_key(name) {
                self.fail(pointer, format!("\"{name}\" is a required property"));
            }
        }
        let known = rules.get("properties").and_then(Value::as_object);
        for (name, field) in fields {
            let child = format!("{pointer}/{}", name.replace('~', "~0").replace('/', "~1"));
            match (known.and_then(|k| k.get(name)), rules.get("additionalProperties")) {
                (Some(schema), _) => self.at(schema, field, &child, depth + 1),
                (None, Some(Value::Bool(false))) => {
                    self.fail(pointer, format!("additional property \"{name}\" is not allowed"));
                }
                (None, Some(schema)) => self.at(schema, field, &child, depth + 1),
                (None, None) => {}
            }
        }
    }

    fn array(&mut self, rules: &Map<String, Value>, items: &[Value], pointer: &str, depth: usize) {
        let prefix = rules.get("prefixItems").and_then(Value::as_array).map_or(&[][..], Vec::as_slice);
        for (index, item) in items.iter().enumerate() {
            let child = format!("{pointer}/{index}");
            match prefix.get(index) {
                Some(schema) => self.at(schema, item, &child, depth + 1),
                None => {
                    if let Some(schema) = rules.get("items") {
                        self.at(schema, item, &child, depth + 1);
                    }
                }
            }
        }
    }
}

/// JSON Schema's `type`: one name or a list; a number with no fraction is
/// an `integer`.
fn type_matches(types: &Value, value: &Value) -> bool {
    let is = |name: &str| match name {
        "null" => value.is_null(),
        "boolean" => value.is_boolean(),
        "object" => value.is_object(),
        "array" => value.is_array(),
        "string" => value.is_string(),
        "number" => value.is_number(),
        "integer" => value.is_i64() || value.is_u64() || value.as_f64().is_some_and(|f| f.fract() == 0.0),
        _ => false,
    };
    match types {
        Value::String(name) => is(name),
        Value::Array(names) => names.iter().filter_map(Value::as_str).any(is),
        _ => true,
    }
}

/// JSON equality, with `1` and `1.0` equal as JSON Schema has it.
fn equal(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => x.as_f64() == y.as_f64(),
        (Value::Array(x), Value::Array(y)) => x.len() == y.len() && x.iter().zip(y).all(|(x, y)| equal(x, y)),
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len() && x.iter().all(|(k, v)| y.get(k).is_some_and(|w| equal(v, w)))
        }
        _ => a == b,
    }
}

/// A value as a message shows it (clipped).
fn shown(value: &Value) -> String {
    keel_core::clip(&value.to_string()).into_owned()
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn check(schema: Value, value: Value) -> Vec<(String, String)> {
        let shape = Shape { schema: Arc::new(schema) };
        shape.check(&value).into_iter().map(|v| (v.pointer, v.message)).collect()
    }

    #[test]
    fn each_violation_is_named_by_its_pointer() {
        let schema = json!({
            "type": "object",
            "properties": {
                "level": {"type": "string", "minLength": 1},
                "limit": {"type": "integer", "minimum": 0, "maximum": 10},
                "tags": {"type": "array", "items": {"$ref": "#/$defs/Tag"}},
                "a/b": {"type": "boolean"}
            },
            "required": ["level"],
            "additionalProperties": false,
            "$defs": {"Tag": {"enum": ["x", "y"]}}
        });
        let found = check(schema.clone(), json!({"limit": 11, "tags": ["x", "z"], "a/b": 1, "extra": true}));
        let pointers: Vec<&str> = found.iter().map(|(p, _)| p.as_str()).collect();
        // Fields in the document's key order (sorted), after what the object itself lacks.
        assert_eq!(pointers, ["", "/a~1b", "", "/limit", "/tags/1"], "{found:?}");
        assert!(found[0].1.contains("\"level\" is a required property"), "{found:?}");
        assert!(found[2].1.contains("\"extra\""), "{found:?}");
        assert!(
            check(schema.clone(), json!({"level": "info", "limit": 3.0, "tags": []})).is_empty(),
            "3.0 is an integer"
        );
        assert_eq!(check(schema, json!([])).len(), 1, "not an object: one violation, nothing below it");
    }

    #[test]
    fn combinators_and_nullable_types() {
        let schema = json!({"anyOf": [{"type": "string"}, {"type": ["integer", "null"]}], "not": {"const": 5}});
        assert!(check(schema.clone(), json!(null)).is_empty());
        assert!(check(schema.clone(), json!("x")).is_empty());
        assert_eq!(check(schema.clone(), json!(5)).len(), 1, "excluded by not");
        assert_eq!(check(schema, json!(true)).len(), 1);
        let one_of = json!({"oneOf": [{"type": "integer"}, {"type": "number"}]});
        assert_eq!(check(one_of, json!(1)).len(), 1, "1 matches both shapes");
        assert_eq!(check(json!(false), json!(1)).len(), 1);
    }
}
