//! The PromQL of the rules and dashboards: the metric names each query
//! reads, and the names a running process exports.

use std::collections::BTreeSet;
use std::path::PathBuf;

use anyhow::{Context as _, Result, bail};
use yaml_rust2::YamlLoader;

/// Every PromQL expression of the rules and dashboards, and the names that
/// recording rules define.
#[derive(Debug, Default)]
pub struct Queries {
    /// `(where, expression)`.
    pub exprs: Vec<(String, String)>,
    /// Names defined by `record:` rules.
    pub recorded: BTreeSet<String>,
}

impl Queries {
    /// Reads Prometheus rule files and Grafana dashboards.
    pub fn load(rules: &[PathBuf], dashboards: &[PathBuf]) -> Result<Self> {
        let mut queries = Queries::default();
        for file in rules {
            let text = std::fs::read_to_string(file).with_context(|| format!("cannot read {}", file.display()))?;
            let docs = YamlLoader::load_from_str(&text).with_context(|| format!("{}: invalid YAML", file.display()))?;
            for group in docs.iter().flat_map(|d| d["groups"].as_vec().cloned().unwrap_or_default()) {
                for rule in group["rules"].as_vec().cloned().unwrap_or_default() {
                    let name = rule["alert"].as_str().or(rule["record"].as_str()).unwrap_or("?").to_owned();
                    if let Some(record) = rule["record"].as_str() {
                        queries.recorded.insert(record.to_owned());
                    }
                    let expr = rule["expr"]
                        .as_str()
                        .with_context(|| format!("{}: rule {name} has no expr", file.display()))?;
                    queries.exprs.push((format!("{} {name}", file.display()), expr.to_owned()));
                }
            }
        }
        for file in dashboards {
            let text = std::fs::read_to_string(file).with_context(|| format!("cannot read {}", file.display()))?;
            let dashboard: serde_json::Value =
                serde_json::from_str(&text).with_context(|| format!("{}: invalid JSON", file.display()))?;
            let mut exprs = Vec::new();
            collect_exprs(&dashboard, &mut exprs);
            if exprs.is_empty() {
                bail!("{}: a dashboard with no queries", file.display());
            }
            queries.exprs.extend(exprs.into_iter().map(|e| (file.display().to_string(), e)));
        }
        Ok(queries)
    }

    /// `where: name` for every metric name used but neither in `exported`,
    /// recorded, nor one Prometheus writes itself for each target (`up`).
    pub fn unknown(&self, exported: &BTreeSet<String>) -> Vec<String> {
        let mut unknown = Vec::new();
        for (place, expr) in &self.exprs {
            for name in metric_names(expr) {
                if !exported.contains(&name) && !self.recorded.contains(&name) && !PER_TARGET.contains(&name.as_str()) {
                    unknown.push(format!("{place}: {name}"));
                }
            }
        }
        unknown
    }
}

/// The series Prometheus writes for every scrape target.
pub const PER_TARGET: &[&str] = &["up", "scrape_duration_seconds", "scrape_samples_scraped"];

/// Every `"expr"` in a dashboard (panels, rows, templating queries aside).
pub(super) fn collect_exprs(value: &serde_json::Value, out: &mut Vec<String>) {
    match value {
        serde_json::Value::Object(map) => {
            for (key, value) in map {
                match (key.as_str(), value) {
                    ("expr", serde_json::Value::String(expr)) => out.push(expr.clone()),
                    _ => collect_exprs(value, out),
                }
            }
        }
        serde_json::Value::Array(items) => items.iter().for_each(|item| collect_exprs(item, out)),
        _ => {}
    }
}

/// Words that are never metric names: binary operators, modifiers, and the
/// aggregation operators (which may be followed by `by (…)` rather than `(`).
pub(super) const KEYWORDS: [&str; 23] = [
    "and",
    "or",
    "unless",
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
    "bool",
    "offset",
    "sum",
    "min",
    "max",
    "avg",
    "group",
    "stddev",
    "stdvar",
    "count",
    "count_values",
    "bottomk",
    "topk",
    "quantile",
];

/// The metric names a PromQL expression reads: identifiers that are not
/// functions, keywords, label names (in `{…}` or `by (…)`), strings, or
/// Grafana variables (`$job`).
pub fn metric_names(expr: &str) -> BTreeSet<String> {
    let chars: Vec<char> = expr.chars().collect();
    let mut names = BTreeSet::new();
    let mut i = 0;
    // Depth of `{…}` and of the parentheses after a label-list keyword.
    let (mut braces, mut label_parens) = (0usize, Vec::<usize>::new());
    let mut parens = 0usize;
    let mut expect_label_list = false;
    while i < chars.len() {
        let c = chars[i];
        match c {
            '"' | '\'' | '`' => {
                i += 1;
                while i < chars.len() && chars[i] != c {
                    i += if chars[i] == '\\' { 2 } else { 1 };
                }
                i += 1;
                continue;
            }
            '{' => braces += 1,
            '}' => braces = braces.saturating_sub(1),
            '[' => {
                // Range or subquery: skip to the closing bracket.
                while i < chars.len() && chars[i] != ']' {
                    i += 1;
                }
            }
            '(' => {
                parens += 1;
                if std::mem::take(&mut expect_label_list) {
                    label_parens.push(parens);
                }
            }
            ')' => {
                if label_parens.last() == Some(&parens) {
                    label_parens.pop();
                }
                parens = parens.saturating_sub(1);
            }
            '$' => {
                i += 1;
                while i < chars.len() && (chars[i].is_alphanumeric() || chars[i] == '_') {
                    i += 1;
                }
                continue;
            }
            c if c.is_ascii_alphabetic() || c == '_' || c == ':' => {
                let start = i;
                while i < chars.len() && (chars[i].is_ascii_alphanumeric() || chars[i] == '_' || chars[i] == ':') {
                    i += 1;
                }
                let preceded_by_number = start > 0 && (chars[start - 1].is_ascii_digit() || chars[start - 1] == '.');
                let word: String = chars[start..i].iter().collect();
                let next = chars[i..].iter().find(|c| !c.is_whitespace()).copied();
                if matches!(word.as_str(), "by" | "without" | "on" | "ignoring" | "group_left" | "group_right") {
                    expect_label_list = true;
                } else if braces == 0
                    && label_parens.is_empty()
                    && !preceded_by_number
                    && next != Some('(')
                    && !KEYWORDS.contains(&word.as_str())
                    && !matches!(word.as_str(), "Inf" | "NaN" | "inf" | "nan")
                {
                    names.insert(word);
                }
                continue;
            }
            _ => {}
        }
        i += 1;
    }
    names
}

/// The series names a Prometheus text exposition offers (histograms as
/// their `_bucket`, `_sum` and `_count` series).
pub fn exported_names(exposition: &str) -> BTreeSet<String> {
    exposition
        .lines()
        .filter(|line| !line.starts_with('#') && !line.trim().is_empty())
        .filter_map(|line| line.split(['{', ' ']).next())
        .map(str::to_owned)
        .collect()
}
