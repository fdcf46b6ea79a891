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
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use serde_json::Value;

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

const TOKIO_MAIN: &str = r#"tokio = { version = "1", default-features = false, features = ["rt", "macros"] }"#;
const TOKIO_NET: &str =
    r#"tokio = { version = "1", default-features = false, features = ["rt", "macros", "net", "io-util"] }"#;
const AXUM: &str = r#"axum = { version = "0.8", default-features = false, features = ["http1", "tokio"] }"#;
const BYTES: &str = r#"bytes = "1""#;
const SERDE: &str = r#"serde = { version = "1", features = ["derive"] }"#;
const SERDE_JSON: &str = r#"serde_json = "1""#;
const OTEL: &str = r#"opentelemetry = { version = "0.33", default-features = false, features = ["metrics"] }"#;
const TRACING: &str = r#"tracing = "0.1""#;
const SUBSCRIBER: &str =
    r#"tracing-subscriber = { version = "0.3", default-features = false, features = ["std", "registry"] }"#;

/// Lower layers, as a user adding one crate next to another would write them.
const TELEMETRY: &str = "keel-telemetry+prometheus";
const STORE_SQLITE: &str = "keel-store+sqlite";
const CORE: &str = "keel-core";
const HEALTH: &str = "keel-health-status";

/// What no crate's minimal feature set may pull in: databases, Redis, an
/// HTTP server or client, exporters.
const HEAVY: &[&str] = &[
    "diesel",
    "diesel-async",
    "tokio-postgres",
    "libsqlite3-sys",
    "fred",
    "axum",
    "hyper",
    "reqwest",
    "opentelemetry-prometheus",
    "opentelemetry-otlp",
    "prometheus",
];
/// No async runtime other than tokio.
const RUNTIMES: &[&str] = &["async-std", "smol", "async-global-executor"];

/// Every library crate's example. Budgets: the tree measured when they were
/// set, plus about 10 % (see `docs/reuse.md`). With no features, no crate
/// but keel-http (an HTTP adapter by nature) pulls in anything [`HEAVY`].
pub const EXAMPLES: &[Example] = &[
    Example {
        krate: "keel-core",
        name: "shutdown",
        deps: &[TOKIO_MAIN],
        budgets: &[("none", 40)],
        banned: &concat_banned(),
    },
    Example {
        krate: "keel-telemetry",
        name: "metrics",
        deps: &[OTEL],
        budgets: &[("none", 6), ("prometheus", 42), ("default", 62)],
        banned: &concat_banned(),
    },
    Example {
        krate: "keel-store",
        name: "embedded",
        deps: &[TOKIO_MAIN, BYTES, TELEMETRY],
        budgets: &[("none", 60), ("sqlite", 90), ("default", 183)],
        banned: &concat_banned(),
    },
    Example {
        krate: "keel-health-status",
        name: "tcp_check",
        deps: &[TOKIO_NET, AXUM, CORE],
        budgets: &[("none", 47), ("default", 62)],
        banned: &concat_banned(),
    },
    Example {
        krate: "keel-settings-sync",
        name: "follow",
        deps: &[TOKIO_MAIN, SERDE, TELEMETRY, STORE_SQLITE],
        budgets: &[("none", 67), ("sqlite", 96), ("default", 133)],
        banned: &concat_banned(),
    },
    Example {
        krate: "keel-batcher",
        name: "custom_sink",
        deps: &[TOKIO_MAIN],
        budgets: &[("none", 65), ("default", 131)],
        banned: &concat_banned(),
    },
    Example {
        krate: "keel-write-behind",
        name: "queue",
        deps: &[TOKIO_MAIN],
        budgets: &[("none", 44), ("default", 187)],
        banned: &concat_banned(),
    },
    Example {
        krate: "keel-entries",
        name: "embedded",
        deps: &[TOKIO_MAIN, SERDE_JSON, TELEMETRY, STORE_SQLITE, CORE],
        budgets: &[("none", 67), ("sqlite", 96), ("default", 188)],
        banned: &["axum", "fred", "tokio-postgres", "opentelemetry-otlp"],
    },
    Example {
        krate: "keel-monitoring",
        name: "capture",
        deps: &[TOKIO_MAIN, TRACING, SUBSCRIBER],
        budgets: &[("none", 63), ("default", 149)],
        banned: &concat_banned(),
    },
    Example {
        krate: "keel-http",
        name: "service",
        deps: &[TOKIO_NET, AXUM, CORE, TELEMETRY, HEALTH],
        budgets: &[("none", 106), ("health", 108)],
        banned: &["diesel", "fred", "tokio-postgres", "libsqlite3-sys", "opentelemetry-otlp"],
    },
];

/// [`HEAVY`] and [`RUNTIMES`] together.
const fn concat_banned() -> [&'static str; 14] {
    let mut all = [""; 14];
    let mut i = 0;
    while i < HEAVY.len() {
        all[i] = HEAVY[i];
        i += 1;
    }
    let mut j = 0;
    while j < RUNTIMES.len() {
        all[i + j] = RUNTIMES[j];
        j += 1;
    }
    all
}

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
    fn dependency(&self, krate: &str, path: &Path) -> String {
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

/// An example to build from a package of its own: the crate it shows, the
/// source, and the other dependencies it names.
#[derive(Debug, Clone)]
pub struct Scratch<'a> {
    /// The crate the package depends on alone.
    pub krate: &'a str,
    /// The example's name (the package is `reuse-<krate>-<name>`).
    pub name: &'a str,
    /// The crate's directory.
    pub crate_dir: &'a Path,
    /// The example's source, copied as the package's `main.rs`.
    pub source: &'a Path,
    /// Further `[dependencies]` lines.
    pub deps: Vec<String>,
    /// A lock file to start from, so versions match the workspace's.
    pub lock: Option<&'a Path>,
}

impl Scratch<'_> {
    /// The package's binary name.
    fn binary(&self) -> String {
        format!("reuse-{}-{}", self.krate, self.name)
    }

    /// Writes the package under `dir`: a manifest that is its own
    /// workspace, the lock file, the example as `src/main.rs`.
    fn write(&self, dir: &Path, set: &FeatureSet) -> Result<PathBuf> {
        std::fs::create_dir_all(dir.join("src"))?;
        std::fs::copy(self.source, dir.join("src/main.rs"))
            .with_context(|| format!("cannot copy {}", self.source.display()))?;
        if let Some(lock) = self.lock {
            std::fs::copy(lock, dir.join("Cargo.lock"))?;
        }
        let deps: Vec<String> =
            std::iter::once(set.dependency(self.krate, self.crate_dir)).chain(self.deps.iter().cloned()).collect();
        let manifest = format!(
            "# Written by `cargo xtask reuse`: {krate}'s example `{name}`, as a user outside Keel's workspace builds it.\n\
             [package]\nname = \"{binary}\"\nversion = \"0.0.0\"\nedition = \"2024\"\npublish = false\n\n\
             [workspace]\n\n[dependencies]\n{deps}\n",
            krate = self.krate,
            name = self.name,
            binary = self.binary(),
            deps = deps.join("\n")
        );
        let path = dir.join("Cargo.toml");
        std::fs::write(&path, manifest)?;
        Ok(path)
    }

    /// Builds the package under `dir` with `set` (debug, no debug info: this
    /// is about what compiles) into `target`, and runs it; it must exit 0
    /// within a minute.
    pub fn build_and_run(&self, dir: &Path, target: &Path, set: &FeatureSet) -> Result<()> {
        let manifest = self.write(dir, set)?;
        crate::cmd::run(
            cargo()
                .args(["build", "--quiet", "--manifest-path"])
                .arg(&manifest)
                .env("CARGO_TARGET_DIR", target)
                .env("CARGO_PROFILE_DEV_DEBUG", "0")
                .current_dir(dir),
        )?;
        let binary = target.join("debug").join(self.binary());
        run_within(Command::new(&binary).current_dir(dir).stdout(Stdio::inherit()), Duration::from_secs(60))
    }

    /// Compiles the package under `dir` with `set` (`cargo check`: every
    /// error a missing feature or dependency causes, without code
    /// generation).
    pub fn check(&self, dir: &Path, target: &Path, set: &FeatureSet) -> Result<()> {
        let manifest = self.write(dir, set)?;
        crate::cmd::run(
            cargo()
                .args(["check", "--quiet", "--manifest-path"])
                .arg(&manifest)
                .env("CARGO_TARGET_DIR", target)
                .current_dir(dir),
        )
    }

    /// A clean release build under `dir` with `set` in a target directory of
    /// its own: how long it took on this machine and how big the binary is.
    fn release_build(&self, dir: &Path, target: &Path, set: &FeatureSet) -> Result<(f64, u64)> {
        let manifest = self.write(dir, set)?;
        let _ = std::fs::remove_dir_all(target);
        let started = Instant::now();
        crate::cmd::run(
            cargo()
                .args(["build", "--quiet", "--release", "--manifest-path"])
                .arg(&manifest)
                .env("CARGO_TARGET_DIR", target)
                .current_dir(dir),
        )?;
        let seconds = started.elapsed().as_secs_f64();
        let binary = target.join("release").join(self.binary());
        let bytes = std::fs::metadata(&binary).with_context(|| format!("no {}", binary.display()))?.len();
        let _ = std::fs::remove_dir_all(target);
        Ok((seconds, bytes))
    }
}

/// A lower Keel layer the example also names (`keel-store+sqlite`: with
/// those features), as a path dependency without default features.
fn sibling(root: &Path, dep: &str) -> String {
    if !dep.starts_with("keel-") {
        return dep.to_owned();
    }
    let (name, features) = dep.split_once('+').unwrap_or((dep, ""));
    let list = features.split(',').filter(|f| !f.is_empty()).map(|f| format!("\"{f}\"")).collect::<Vec<_>>();
    let path = root.join("crates").join(name);
    format!("{name} = {{ path = \"{}\", default-features = false, features = [{}] }}", path.display(), list.join(", "))
}

fn cargo() -> Command {
    Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
}

/// Runs `command`, killing it and failing when it outlives `limit`.
fn run_within(command: &mut Command, limit: Duration) -> Result<()> {
    let shown = format!("{command:?}");
    let mut child = command.spawn().with_context(|| format!("cannot run {shown}"))?;
    let started = Instant::now();
    loop {
        if let Some(status) = child.try_wait()? {
            if !status.success() {
                bail!("{shown} exited with {status}");
            }
            return Ok(());
        }
        if started.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            bail!("{shown} still running after {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The crates (name only) in `krate`'s normal dependency tree with `set`,
/// the crate itself included, resolved in a package that depends on it
/// alone.
pub fn dependency_tree(dir: &Path, krate: &str, path: &Path, set: &FeatureSet) -> Result<BTreeSet<String>> {
    std::fs::create_dir_all(dir.join("src"))?;
    std::fs::write(dir.join("src/lib.rs"), "")?;
    let manifest = format!(
        "[package]\nname = \"reuse-tree\"\nversion = \"0.0.0\"\nedition = \"2024\"\npublish = false\n\n\
         [workspace]\n\n[dependencies]\n{}\n",
        set.dependency(krate, path)
    );
    std::fs::write(dir.join("Cargo.toml"), manifest)?;
    if let Some(lock) = path.ancestors().map(|a| a.join("Cargo.lock")).find(|l| l.is_file()) {
        std::fs::copy(lock, dir.join("Cargo.lock"))?;
    }
    let out = cargo()
        .args(["tree", "-e", "normal", "--prefix", "none", "--format", "{p}", "-p", krate])
        .current_dir(dir)
        .output()
        .context("cannot run cargo tree")?;
    if !out.status.success() {
        bail!("cargo tree for {krate} ({}) failed: {}", set.label(), String::from_utf8_lossy(&out.stderr));
    }
    Ok(parse_tree(&String::from_utf8_lossy(&out.stdout)))
}

/// Crate names in `cargo tree --prefix none` output (`name vX.Y.Z (…)`,
/// repeats marked `(*)`).
pub fn parse_tree(text: &str) -> BTreeSet<String> {
    text.lines().filter_map(|l| l.split_whitespace().next()).map(str::to_owned).collect()
}

/// One line of the footprint table.
#[derive(Debug, Clone)]
struct Row {
    example: Example,
    set: String,
    crates: usize,
    budget: usize,
    /// Clean release build seconds and binary bytes; `None` when the
    /// example cannot build with this set (it needs more).
    built: Option<(f64, u64)>,
}

const TABLE_START: &str = "<!-- footprint table: written by `cargo xtask reuse --report` -->";
const TABLE_END: &str = "<!-- end of footprint table -->";

fn write_report(root: &Path, rows: &[Row]) -> Result<()> {
    let mut table = String::from(
        "| crate (example) | features | crates in tree | budget | clean release build | example binary |\n|---|---|---:|---:|---:|---:|\n",
    );
    for row in rows {
        let (build, binary) = match row.built {
            Some((seconds, bytes)) => {
                (format!("{seconds:.0} s"), format!("{:.1} MiB", bytes as f64 / (1024.0 * 1024.0)))
            }
            None => ("—".to_owned(), "— (the example needs more features)".to_owned()),
        };
        table.push_str(&format!(
            "| {} (`{}`) | {} | {} | {} | {build} | {binary} |\n",
            row.example.krate, row.example.name, row.set, row.crates, row.budget
        ));
    }
    let path = root.join("docs/reuse.md");
    let doc = std::fs::read_to_string(&path).with_context(|| format!("cannot read {}", path.display()))?;
    let (Some(start), Some(end)) = (doc.find(TABLE_START), doc.find(TABLE_END)) else {
        bail!("{} lacks the footprint table markers", path.display());
    };
    let updated = format!("{}{TABLE_START}\n{table}{}", &doc[..start], &doc[end..]);
    std::fs::write(&path, updated)?;
    eprintln!("reuse: footprint table written to {}", path.display());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

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
