//! Each document's JSON Schema (2020-12), generated from its Rust type, and
//! the check of a JSON value against it before the value is decoded.

use std::sync::Arc;

use serde_json::Value;

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

/// A document type's schema and its compiled validator.
pub(crate) struct Shape {
    schema: Arc<Value>,
    validator: jsonschema::Validator,
}

/// At most this many violations are reported for one value.
const MAX_VIOLATIONS: usize = 20;

impl Shape {
    /// The schema of `T`; an error only if the generated schema does not
    /// compile (a bug in the type's `JsonSchema`).
    pub(crate) fn of<T: schemars::JsonSchema>() -> Result<Self, String> {
        let schema = serde_json::to_value(schemars::schema_for!(T)).map_err(|err| err.to_string())?;
        let validator = jsonschema::validator_for(&schema).map_err(|err| err.to_string())?;
        Ok(Self { schema: Arc::new(schema), validator })
    }

    /// The schema, as published.
    pub(crate) fn schema(&self) -> &Arc<Value> {
        &self.schema
    }

    /// Every way `value` breaks the schema (the first 20), empty when it
    /// conforms.
    pub(crate) fn check(&self, value: &Value) -> Vec<Violation> {
        self.validator
            .iter_errors(value)
            .take(MAX_VIOLATIONS)
            .map(|err| Violation {
                pointer: err.instance_path().to_string(),
                message: keel_core::clip(&err.to_string()).into_owned(),
            })
            .collect()
    }
}
