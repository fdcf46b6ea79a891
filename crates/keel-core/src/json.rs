//! What a JSON value must not hold to be stored anywhere Keel stores it.

use serde_json::Value;

/// The path of the first string or object key in `value` that holds U+0000
/// (which PostgreSQL's text and jsonb refuse), written from `root`:
/// `value.tags[2]`, `value["a b"]`; `None` when there is none.
///
/// ```
/// let value = serde_json::json!({"tags": ["ok", "a\u{0}b"]});
/// assert_eq!(keel_core::nul_path(&value, "value").as_deref(), Some("value.tags[1]"));
/// assert_eq!(keel_core::nul_path(&serde_json::json!({"a": 1}), "value"), None);
/// ```
pub fn nul_path(value: &Value, root: &str) -> Option<String> {
    match value {
        Value::String(s) => s.contains('\0').then(|| root.to_owned()),
        Value::Array(items) => items.iter().enumerate().find_map(|(i, v)| nul_path(v, &format!("{root}[{i}]"))),
        Value::Object(map) => map.iter().find_map(|(k, v)| {
            let path = if k.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
                format!("{root}.{k}")
            } else {
                format!("{root}[{:?}]", k.replace('\0', "\\u0000"))
            };
            if k.contains('\0') { Some(path) } else { nul_path(v, &path) }
        }),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::nul_path;

    #[test]
    fn the_first_nul_is_found_in_strings_and_keys_at_any_depth() {
        assert_eq!(nul_path(&json!({"a": [1, {"b": "x\u{0}"}]}), "value"), Some("value.a[1].b".into()));
        assert_eq!(nul_path(&json!({"k\u{0}": 1}), "value"), Some("value[\"k\\\\u0000\"]".into()));
        assert_eq!(nul_path(&json!("\u{0}"), "value"), Some("value".into()));
        assert_eq!(nul_path(&json!({"a b": ["ok", "\u{0}"]}), "v"), Some("v[\"a b\"][1]".into()));
        assert_eq!(nul_path(&json!({"a": ["fine", 1, null, {"b": "\\u0000"}]}), "value"), None);
    }
}
