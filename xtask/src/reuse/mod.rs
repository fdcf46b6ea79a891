//! `cargo xtask reuse`: each library crate used from a workspace of its own.
//!
//! Inside this workspace, a crate that forgets a feature or a dependency can
//! still build because another member happens to enable it. Here each
//! library crate's example is copied into a fresh package under
//! `target/reuse/<crate>-<example>/` whose manifest names that crate alone
//! (by path) plus what the example itself uses, and is compiled once per
//! feature set a user can ask for: built and run with the crate's defaults,
//! the example's minimal features and all features together; compiled
//! (`cargo check`) with each further feature added to the minimal ones.
//! `tidy` lints each crate alone with each feature (no example involved);
//! this proves the crate is usable from outside.
//!
//! Each crate's footprint — the crates in its dependency tree with no
//! features, the example's minimal ones and its defaults — is checked
//! against the budgets written here (and in `docs/reuse.md`), and with no
//! features it must pull in none of the crates its entry bans. `--report` also times a clean release build of
//! each example and measures its binary, and rewrites the table in
//! `docs/reuse.md`.

use std::collections::BTreeSet;
use std::path::Path;

use anyhow::{Context as _, Result, bail};

mod examples;
mod features;
mod report;
mod scratch;
pub use examples::*;
pub use features::*;
use report::*;
pub use scratch::*;

/// One library crate's example, and what taking the crate on may cost.
#[derive(Debug, Clone, Copy)]
pub struct Example {
    /// The library crate.
    pub krate: &'static str,
    /// Its example (`crates/<krate>/examples/<name>.rs`).
    pub name: &'static str,
    /// What the example uses besides the crate: `[dependencies]` lines of
    /// the scratch manifest (tokio's runtime, axum, serde…).
    pub deps: &'static [&'static str],
    /// Most crates in the crate's dependency tree (itself and its Keel
    /// dependencies included) per feature set: `none`, `default`, or the
    /// features joined by commas.
    pub budgets: &'static [(&'static str, usize)],
    /// Crates the crate must not pull in with no features.
    pub banned: &'static [&'static str],
}
/// `cargo xtask reuse [--report] [--only CRATE]`.
pub fn run(root: &Path, args: &[String]) -> Result<()> {
    let mut report = false;
    let mut only = None;
    let mut rest = args.iter();
    while let Some(arg) = rest.next() {
        match arg.as_str() {
            "--report" => report = true,
            "--only" => only = Some(rest.next().context("--only needs a crate name")?.clone()),
            other => bail!("unknown reuse option {other:?}"),
        }
    }
    let scratch = root.join("target/reuse");
    let metadata = crate::tidy::metadata(root)?;
    let mut failures = Vec::new();
    let mut rows = Vec::new();
    for example in EXAMPLES.iter().filter(|e| only.as_deref().is_none_or(|o| o == e.krate)) {
        let info = crate_info(&metadata, example.krate)?;
        if !info.required.iter().any(|(name, _)| name == example.name) {
            bail!("{}: no example named {} in its Cargo.toml", example.krate, example.name);
        }
        let source = info.dir.join("examples").join(format!("{}.rs", example.name));
        let lock = root.join("Cargo.lock");
        let package = Scratch {
            krate: example.krate,
            name: example.name,
            crate_dir: &info.dir,
            source: &source,
            deps: example.deps.iter().map(|dep| sibling(root, dep)).collect(),
            lock: Some(&lock),
        };
        let dir = scratch.join(format!("{}-{}", example.krate, example.name));
        let required = info.required_of(example.name);
        let all: BTreeSet<String> = info.features.iter().cloned().chain(required.iter().cloned()).collect();
        for set in feature_sets(&info, example.name) {
            // Defaults, the minimal set and all features are built and run;
            // each feature added to the minimal set is compiled (what a
            // forgotten feature or dependency breaks) without linking.
            let run = set.features.as_ref().is_none_or(|f| *f == required || *f == all);
            let how = if run { "built and run" } else { "compiled" };
            eprintln!("reuse: {} example {} with features {} ({how})", example.krate, example.name, set.label());
            let done = if run {
                package.build_and_run(&dir, &scratch.join("target"), &set)
            } else {
                package.check(&dir, &scratch.join("target"), &set)
            };
            if let Err(err) = done {
                failures.push(format!("{} ({}): {err:#}", example.krate, set.label()));
            }
        }
        for (label, budget) in example.budgets.iter().copied() {
            let set = FeatureSet::parse(label);
            let tree = dependency_tree(&scratch.join("tree"), example.krate, &info.dir, &set)?;
            eprintln!("reuse: {} ({label}): {} crates in its tree (budget {budget})", example.krate, tree.len());
            failures.extend(judge(example, label, budget, &tree));
            if report {
                let covered = match &set.features {
                    None => required.is_subset(&info.defaults),
                    Some(features) => required.is_subset(features),
                };
                let built = if covered {
                    let target =
                        scratch.join("report").join(format!("{}-{}", package.binary(), label.replace(',', "+")));
                    Some(package.release_build(&dir, &target, &set)?)
                } else {
                    None
                };
                rows.push(Row { example: *example, set: label.to_owned(), crates: tree.len(), budget, built });
            }
        }
    }
    if report {
        write_report(root, &rows)?;
    }
    if !failures.is_empty() {
        for failure in &failures {
            eprintln!("reuse: FAILED {failure}");
        }
        bail!("{} reuse failure(s)", failures.len());
    }
    eprintln!("reuse: ok");
    Ok(())
}

/// What is wrong with `example`'s crate having `tree` with the feature set
/// `label`: over its budget, or (with no features) pulling in a crate it
/// must not.
pub fn judge(example: &Example, label: &str, budget: usize, tree: &BTreeSet<String>) -> Vec<String> {
    let mut wrong = Vec::new();
    if tree.len() > budget {
        wrong.push(format!(
            "{} ({label}): {} crates in its dependency tree, over its budget of {budget}",
            example.krate,
            tree.len()
        ));
    }
    let banned: Vec<&str> = example.banned.iter().copied().filter(|b| label == "none" && tree.contains(*b)).collect();
    if !banned.is_empty() {
        wrong.push(format!("{} ({label}): pulls in {}", example.krate, banned.join(", ")));
    }
    wrong
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn info(features: &[&str], defaults: &[&str], required: &[&str]) -> CrateInfo {
        CrateInfo {
            dir: PathBuf::from("/x"),
            features: features.iter().map(|f| (*f).to_owned()).collect(),
            defaults: defaults.iter().map(|f| (*f).to_owned()).collect(),
            required: vec![("ex".into(), required.iter().map(|f| (*f).to_owned()).collect())],
        }
    }

    #[test]
    fn each_feature_is_built_on_top_of_what_the_example_needs() {
        let sets =
            feature_sets(&info(&["postgres", "redis", "sqlite"], &["postgres", "redis", "sqlite"], &["sqlite"]), "ex");
        let labels: Vec<String> = sets.iter().map(FeatureSet::label).collect();
        assert_eq!(labels, ["default", "postgres,sqlite", "redis,sqlite", "sqlite"]);
    }

    #[test]
    fn an_example_the_defaults_do_not_cover_is_not_built_with_them() {
        let sets = feature_sets(&info(&["entries", "sqlite"], &["sqlite"], &["entries", "sqlite"]), "ex");
        let labels: Vec<String> = sets.iter().map(FeatureSet::label).collect();
        assert_eq!(labels, ["entries,sqlite"]);
    }

    #[test]
    fn a_crate_without_features_is_built_once() {
        let sets = feature_sets(&info(&[], &[], &[]), "ex");
        assert_eq!(sets.iter().map(FeatureSet::label).collect::<Vec<_>>(), ["default"]);
    }

    #[test]
    fn a_tree_over_budget_or_pulling_a_banned_crate_fails() {
        let core = EXAMPLES.iter().find(|e| e.krate == "keel-core").expect("keel-core has an example");
        let tree = |names: &[&str]| names.iter().map(|n| (*n).to_owned()).collect::<BTreeSet<String>>();
        assert!(judge(core, "none", 3, &tree(&["keel-core", "tokio"])).is_empty());
        let over = judge(core, "none", 1, &tree(&["keel-core", "tokio"]));
        assert_eq!(over, ["keel-core (none): 2 crates in its dependency tree, over its budget of 1"]);
        let heavy = judge(core, "none", 9, &tree(&["keel-core", "fred", "diesel"]));
        assert_eq!(heavy, ["keel-core (none): pulls in diesel, fred"]);
        // With features, a heavy crate may be the point (a backend).
        assert!(judge(core, "default", 9, &tree(&["keel-core", "fred"])).is_empty());
    }

    #[test]
    fn labels_read_back() {
        for label in ["default", "none", "entries,sqlite"] {
            assert_eq!(FeatureSet::parse(label).label(), label);
        }
    }

    #[test]
    fn tree_lines_are_read_by_name() {
        let tree = parse_tree("keel-core v0.1.0 (/x)\ntokio v1.0.0\ntokio v1.0.0 (*)\n");
        assert_eq!(tree.into_iter().collect::<Vec<_>>(), ["keel-core", "tokio"]);
    }
}
