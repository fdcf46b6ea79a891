//! Which feature sets an example is built with, read from `cargo metadata`.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result};
use serde_json::Value;

/// One build of one example.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct FeatureSet {
    /// `None`: the crate's default features; otherwise exactly these.
    pub features: Option<BTreeSet<String>>,
}

impl FeatureSet {
    /// How the table and the logs name it.
    pub fn label(&self) -> String {
        match &self.features {
            None => "default".into(),
            Some(set) if set.is_empty() => "none".into(),
            Some(set) => set.iter().cloned().collect::<Vec<_>>().join(","),
        }
    }

    /// `default`, `none`, or features joined by commas.
    pub fn parse(label: &str) -> Self {
        match label {
            "default" => Self { features: None },
            "none" => Self { features: Some(BTreeSet::new()) },
            list => Self { features: Some(list.split(',').map(str::to_owned).collect()) },
        }
    }

    /// The crate's dependency line in the scratch manifest.
    pub(super) fn dependency(&self, krate: &str, path: &Path) -> String {
        let path = path.display();
        match &self.features {
            None => format!("{krate} = {{ path = \"{path}\" }}"),
            Some(set) => {
                let list = set.iter().map(|f| format!("\"{f}\"")).collect::<Vec<_>>().join(", ");
                format!("{krate} = {{ path = \"{path}\", default-features = false, features = [{list}] }}")
            }
        }
    }
}

/// What cargo metadata says about a library crate.
#[derive(Debug, Clone)]
pub struct CrateInfo {
    /// Its directory.
    pub dir: PathBuf,
    /// Its features, `default` and `testing` (helpers for this workspace's
    /// tests) left out, and the features it enables by default.
    pub features: Vec<String>,
    /// Its default features.
    pub defaults: BTreeSet<String>,
    /// Each example's `required-features`.
    pub required: Vec<(String, BTreeSet<String>)>,
}

impl CrateInfo {
    /// The features `example` requires (none when it names none).
    pub fn required_of(&self, example: &str) -> BTreeSet<String> {
        self.required.iter().find(|(name, _)| name == example).map(|(_, r)| r.clone()).unwrap_or_default()
    }
}

/// Every feature set an example is built with: the crate's defaults (when
/// they cover what the example requires), the example's minimal features,
/// each other feature added to them, and all of them together.
pub fn feature_sets(info: &CrateInfo, example: &str) -> Vec<FeatureSet> {
    let required = info.required_of(example);
    let mut sets = BTreeSet::new();
    if required.is_subset(&info.defaults) {
        sets.insert(FeatureSet { features: None });
    }
    sets.insert(FeatureSet { features: Some(required.clone()) });
    for feature in &info.features {
        let mut with = required.clone();
        with.insert(feature.clone());
        sets.insert(FeatureSet { features: Some(with) });
    }
    sets.insert(FeatureSet { features: Some(info.features.iter().cloned().chain(required).collect()) });
    // Defaults spelled out are the same build as the defaults themselves.
    let defaults = FeatureSet { features: Some(info.defaults.clone()) };
    if sets.contains(&FeatureSet { features: None }) {
        sets.remove(&defaults);
    }
    sets.into_iter().collect()
}

/// Reads a library crate's features and examples from `cargo metadata`.
pub fn crate_info(metadata: &Value, krate: &str) -> Result<CrateInfo> {
    let package = metadata["packages"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|p| p["name"] == krate)
        .with_context(|| format!("{krate} is not a workspace member"))?;
    let manifest = PathBuf::from(package["manifest_path"].as_str().unwrap_or_default());
    let dir = manifest.parent().context("manifest without a directory")?.to_path_buf();
    let all = package["features"].as_object().cloned().unwrap_or_default();
    let defaults: BTreeSet<String> = all
        .get("default")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|f| f.as_str().map(str::to_owned))
        .collect();
    let features = all.keys().filter(|f| !matches!(f.as_str(), "default" | "testing")).cloned().collect();
    let required = package["targets"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|t| t["kind"].as_array().into_iter().flatten().any(|k| k == "example"))
        .map(|t| {
            let name = t["name"].as_str().unwrap_or_default().to_owned();
            let needs = t["required-features"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|f| f.as_str().map(str::to_owned))
                .collect();
            (name, needs)
        })
        .collect();
    Ok(CrateInfo { dir, features, defaults, required })
}
