//! The package of its own an example is copied into, built, run and
//! checked in, and its resolved dependency tree.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};

use super::*;

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
    pub(super) fn binary(&self) -> String {
        format!("reuse-{}-{}", self.krate, self.name)
    }

    /// Writes the package under `dir`: a manifest that is its own
    /// workspace, the lock file, the example as `src/main.rs`.
    pub(super) fn write(&self, dir: &Path, set: &FeatureSet) -> Result<PathBuf> {
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
    pub(super) fn release_build(&self, dir: &Path, target: &Path, set: &FeatureSet) -> Result<(f64, u64)> {
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
pub(super) fn sibling(root: &Path, dep: &str) -> String {
    if !dep.starts_with("keel-") {
        return dep.to_owned();
    }
    let (name, features) = dep.split_once('+').unwrap_or((dep, ""));
    let list = features.split(',').filter(|f| !f.is_empty()).map(|f| format!("\"{f}\"")).collect::<Vec<_>>();
    let path = root.join("crates").join(name);
    format!("{name} = {{ path = \"{}\", default-features = false, features = [{}] }}", path.display(), list.join(", "))
}

pub(super) fn cargo() -> Command {
    Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
}

/// Runs `command`, killing it and failing when it outlives `limit`.
pub(super) fn run_within(command: &mut Command, limit: Duration) -> Result<()> {
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
