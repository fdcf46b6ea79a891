//! Architecture and hygiene checks (`cargo xtask tidy`).
//!
//! Static checks, read from `cargo metadata` and the sources:
//! - the dependency direction of `docs/ARCHITECTURE.md` invariant 1 (`keel-core` ← `keel-telemetry` ←
//!   `keel-store` ← functional crates ← `keel-entries` ← `keel-http` ← `keel-app` ← binaries);
//! - the API boundaries of `docs/ARCHITECTURE.md`: only `keel-app` (and the
//!   binaries) read flags, environment and files; only `keel-http` builds HTTP
//!   responses and JSON bodies;
//! - `keel-core` and `keel-telemetry` never depend on axum, diesel or fred,
//!   and the storage and functional crates only optionally (behind features);
//! - no placeholder or debugging macros and no ignored tests;
//! - every crate has `[lints] workspace = true`, a crate-level doc comment,
//!   and lives in a directory named after its package;
//! - the CI workflow installs every tool `ci` needs ([`crate::tools`]).
//!
//! [`check_feature_builds`] additionally lints every library crate with
//! `--no-default-features`, each feature alone and all features, proving the
//! storage-free core builds alone; `publish` checks manifests and READMEs
//! ([`crate::publish::check`]).

use std::fmt;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context as _, Result, bail};
use serde_json::Value;

mod builds;

pub use builds::{check_feature_builds, check_lean_http, check_unused_dependencies};

/// Layers of the dependency graph: a crate may depend only on lower layers.
const LAYERS: &[(&str, u8)] = &[
    ("keel-core", 0),
    ("keel-telemetry", 1),
    ("keel-store", 2),
    ("keel-health-status", 3),
    ("keel-settings-sync", 3),
    ("keel-batcher", 3),
    ("keel-write-behind", 3),
    ("keel-monitoring", 3),
    ("keel-entries", 4),
    ("keel-http", 5),
    ("keel-app", 6),
    ("api", 7),
    ("worker", 7),
    ("baseline", 7),
    ("xtask", 8),
];

/// Crates that pull in an HTTP server, an ORM or a Redis client.
const HEAVY: &[&str] =
    &["axum", "tower-http", "hyper", "diesel", "diesel-async", "diesel_migrations", "fred", "tokio-postgres"];

/// One broken rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    /// Which rule.
    pub rule: &'static str,
    /// Where and what.
    pub detail: String,
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "[{}] {}", self.rule, self.detail)
    }
}

fn violation(rule: &'static str, detail: String) -> Violation {
    Violation { rule, detail }
}

fn layer(name: &str) -> Option<u8> {
    LAYERS.iter().find(|(n, _)| *n == name).map(|(_, l)| *l)
}

/// Runs every static check on the workspace at `root`.
pub fn check(root: &Path) -> Result<Vec<Violation>> {
    let metadata = metadata(root)?;
    let packages = metadata["packages"].as_array().context("cargo metadata: no packages")?;
    let members: Vec<&str> = packages.iter().filter_map(|p| p["name"].as_str()).collect();
    let mut found = Vec::new();
    for package in packages {
        check_package(package, &members, &mut found);
    }
    for dir in ["crates", "xtask"] {
        scan_sources(&root.join(dir), &mut found)?;
    }
    for package in packages {
        check_boundaries(package, &mut found)?;
    }
    crate::publish::check(root, &mut found)?;
    let workflow = root.join(".github/workflows/ci.yml");
    if workflow.is_file() {
        for tool in crate::tools::missing_from_workflow(&workflow)? {
            found.push(violation("workflow", format!(".github/workflows/ci.yml does not install {tool}")));
        }
    }
    Ok(found)
}

pub(crate) fn metadata(root: &Path) -> Result<Value> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = Command::new(cargo)
        .args(["metadata", "--format-version", "1", "--no-deps", "--offline"])
        .current_dir(root)
        .output()
        .context("cannot run cargo metadata")?;
    if !out.status.success() {
        bail!("cargo metadata failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    serde_json::from_slice(&out.stdout).context("cargo metadata printed invalid JSON")
}

fn check_package(package: &Value, members: &[&str], found: &mut Vec<Violation>) {
    let name = package["name"].as_str().unwrap_or_default();
    let manifest = PathBuf::from(package["manifest_path"].as_str().unwrap_or_default());
    let Some(own_layer) = layer(name) else {
        found.push(violation(
            "layers",
            format!("{name}: not in the layer table of xtask/src/tidy.rs; add it where docs/ARCHITECTURE.md invariant 1 puts it"),
        ));
        return;
    };

    let dir_name = manifest.parent().and_then(Path::file_name).map(|d| d.to_string_lossy().into_owned());
    if dir_name.as_deref() != Some(name) {
        found.push(violation("layout", format!("{name}: directory {dir_name:?} must be named after the package")));
    }

    for dep in package["dependencies"].as_array().into_iter().flatten() {
        let dep_name = dep["name"].as_str().unwrap_or_default();
        let kind = dep["kind"].as_str().unwrap_or("normal");
        let optional = dep["optional"].as_bool().unwrap_or(false);
        if dep_name == name {
            continue;
        }
        if members.contains(&dep_name) {
            let Some(dep_layer) = layer(dep_name) else { continue };
            if dep_layer >= own_layer {
                found.push(violation(
                    "dependency-direction",
                    format!("{name} ({kind} dependency) must not depend on {dep_name}: {name} is layer {own_layer}, {dep_name} is layer {dep_layer}"),
                ));
            }
        }
        if kind == "normal" && HEAVY.contains(&dep_name) {
            if own_layer <= 1 {
                found.push(violation("lean-core", format!("{name} must not depend on {dep_name}")));
            } else if own_layer <= 3 && !optional {
                found.push(violation(
                    "lean-core",
                    format!("{name} may use {dep_name} only behind a cargo feature (make it optional)"),
                ));
            }
        }
    }

    match std::fs::read_to_string(&manifest) {
        Ok(text) if has_workspace_lints(&text) => {}
        Ok(_) => {
            found.push(violation("lints", format!("{name}: {} lacks `[lints] workspace = true`", manifest.display())))
        }
        Err(err) => found.push(violation("lints", format!("{name}: cannot read {}: {err}", manifest.display()))),
    }

    for target in package["targets"].as_array().into_iter().flatten() {
        let kinds: Vec<&str> = target["kind"].as_array().into_iter().flatten().filter_map(Value::as_str).collect();
        if !kinds.iter().any(|k| matches!(*k, "lib" | "bin")) {
            continue;
        }
        let src = PathBuf::from(target["src_path"].as_str().unwrap_or_default());
        let text = std::fs::read_to_string(&src).unwrap_or_default();
        if !starts_with_crate_doc(&text) {
            found.push(violation(
                "crate-docs",
                format!("{name}: {} must start with a `//!` crate doc comment", src.display()),
            ));
        }
    }
}

/// Crates allowed to read flags, environment and files.
const CONFIG_READERS: &[&str] = &["keel-app", "api", "worker", "baseline", "xtask"];

/// Files that read the environment or files by a documented exception: test
/// support (where the test servers are), the OpenTelemetry SDK's own
/// variables, and the local log's own files (data, not configuration: its
/// segments and the lock holder's pid).
const ENV_EXCEPTIONS: &[&str] =
    &["keel-store/src/testing.rs", "keel-telemetry/src/otlp.rs", "keel-write-behind/src/log/storage.rs"];

/// What only `keel-http` may write in library code: HTTP responses and JSON
/// bodies built by hand.
const HTTP_SHAPES: &[&str] = &["IntoResponse", "StatusCode::", "json!(", "axum::Json", "Json("];

/// The architecture invariants of `docs/ARCHITECTURE.md` that can be read
/// from a manifest and the library sources (tests and benches are exempt).
fn check_boundaries(package: &Value, found: &mut Vec<Violation>) -> Result<()> {
    let name = package["name"].as_str().unwrap_or_default();
    if CONFIG_READERS.contains(&name) && name != "keel-app" {
        return Ok(());
    }
    for dep in package["dependencies"].as_array().into_iter().flatten() {
        let (dep_name, kind) = (dep["name"].as_str().unwrap_or_default(), dep["kind"].as_str().unwrap_or("normal"));
        if kind == "normal" && matches!(dep_name, "clap" | "toml") && !CONFIG_READERS.contains(&name) {
            found.push(violation("boundaries", format!("{name}: only keel-app reads flags and files ({dep_name})")));
        }
    }
    let manifest = PathBuf::from(package["manifest_path"].as_str().unwrap_or_default());
    let src = manifest.parent().map(|dir| dir.join("src")).unwrap_or_default();
    let mut files = Vec::new();
    rust_files(&src, &mut files)?;
    for file in files {
        let text = std::fs::read_to_string(&file).with_context(|| format!("cannot read {}", file.display()))?;
        // Comments and the unit tests at the end of a file are exempt.
        let code = text.split("#[cfg(test)]").next().unwrap_or_default();
        let code: String = code.lines().filter(|l| !l.trim_start().starts_with("//")).collect::<Vec<_>>().join("\n");
        let shown = file.display().to_string();
        let exempt = ENV_EXCEPTIONS.iter().any(|e| shown.ends_with(e));
        if !CONFIG_READERS.contains(&name)
            && !exempt
            && (code.contains("env::var") || code.contains("fs::read_to_string"))
        {
            found.push(violation("boundaries", format!("{shown}: only keel-app reads the environment and files")));
        }
        if name != "keel-http" {
            for pattern in HTTP_SHAPES.iter().filter(|p| code.contains(**p)) {
                found.push(violation(
                    "boundaries",
                    format!("{shown}: `{pattern}`: only keel-http builds HTTP responses and JSON bodies"),
                ));
            }
        }
    }
    Ok(())
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) -> Result<()> {
    let Ok(entries) = std::fs::read_dir(dir) else { return Ok(()) };
    for entry in entries {
        let path = entry?.path();
        if path.is_dir() {
            rust_files(&path, out)?;
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
    Ok(())
}

fn has_workspace_lints(manifest: &str) -> bool {
    let mut in_lints = false;
    for line in manifest.lines().map(str::trim) {
        if line.starts_with('[') {
            in_lints = line == "[lints]";
        } else if in_lints && line.replace(' ', "") == "workspace=true" {
            return true;
        }
    }
    manifest.lines().any(|l| l.replace(' ', "") == "lints.workspace=true")
}

fn starts_with_crate_doc(source: &str) -> bool {
    source.lines().map(str::trim).find(|l| !l.is_empty() && !l.starts_with("#![")).is_some_and(|l| l.starts_with("//!"))
}

/// Patterns that must not appear in code. Built from pieces so this file does
/// not match itself.
fn forbidden() -> [(String, &'static str); 4] {
    [
        (format!("{}!(", "todo"), "placeholder macro"),
        (format!("{}!(", "unimplemented"), "placeholder macro"),
        (format!("{}!(", "dbg"), "debugging macro"),
        (format!("#[{}", "ignore"), "ignored test"),
    ]
}

fn scan_sources(dir: &Path, found: &mut Vec<Violation>) -> Result<()> {
    let Ok(entries) = std::fs::read_dir(dir) else { return Ok(()) };
    let patterns = forbidden();
    for entry in entries {
        let path = entry?.path();
        if path.is_dir() {
            if path.file_name().is_some_and(|n| n == "target") {
                continue;
            }
            scan_sources(&path, found)?;
        } else if path.extension().is_some_and(|e| e == "rs") {
            let text = std::fs::read_to_string(&path).with_context(|| format!("cannot read {}", path.display()))?;
            if let Some(detail) = too_long(&path, &text) {
                found.push(violation("file-size", detail));
            }
            found.extend(bare_spawns(&path, &text).into_iter().map(|detail| violation("spawn", detail)));
            for (number, line) in text.lines().enumerate() {
                for (pattern, what) in &patterns {
                    if line.contains(pattern.as_str()) {
                        found.push(violation(
                            "hygiene",
                            format!("{}:{}: {what} `{pattern}`", path.display(), number + 1),
                        ));
                    }
                }
            }
        }
    }
    Ok(())
}

/// The only library files that may call `tokio::spawn` (docs/ARCHITECTURE.md,
/// invariant 10), and why. Everything else spawns with `Shutdown::spawn`,
/// or `Shutdown::spawn_on` with the owner's tracker when it gave one.
const OWNED_TASKS: &[(&str, &str)] = &[
    ("keel-core/src/shutdown.rs", "the tracker itself, and the signal listener it installs"),
    ("keel-store/src/db/copy.rs", "the driver of a bulk-write connection, ended when its pooled client is dropped"),
    ("keel-http/src/testing.rs", "test support: the reader of a child process's output, ended with the child"),
];

/// Lines of library code under `crates/*/src` that call `tokio::spawn`
/// outside the files of [`OWNED_TASKS`].
fn bare_spawns(path: &Path, text: &str) -> Vec<String> {
    let shown = path.to_string_lossy();
    if !shown.contains("crates/")
        || !shown.contains("/src/")
        || OWNED_TASKS.iter().any(|(file, _)| shown.ends_with(file))
    {
        return Vec::new();
    }
    text.lines()
        .enumerate()
        .filter(|(_, line)| !line.trim_start().starts_with("//"))
        .filter(|(_, line)| line.contains("tokio::spawn(") || line.contains("tokio::task::spawn("))
        .map(|(number, _)| {
            format!(
                "{shown}:{}: a bare tokio::spawn; run it on the Shutdown tracker (Shutdown::spawn_on), or add it to OWNED_TASKS with the handle that ends it",
                number + 1
            )
        })
        .collect()
}

/// Production code a file may hold before it must say why at its top.
const MAX_FILE_LINES: usize = 400;
/// What a longer file's module doc says, followed by the reason.
const LONG_FILE_REASON: &str = "Longer than 400 lines:";

/// A production source file (under a `src/` directory) with more than
/// [`MAX_FILE_LINES`] lines before its first `#[cfg(test)]` and no
/// [`LONG_FILE_REASON`] in its leading `//!` doc.
fn too_long(path: &Path, text: &str) -> Option<String> {
    if !path.components().any(|c| c.as_os_str() == "src") {
        return None;
    }
    let lines = text.lines().take_while(|line| !line.starts_with("#[cfg(test)]")).count();
    let doc = text.lines().take_while(|line| line.starts_with("//!")).collect::<Vec<_>>().join(" ");
    (lines > MAX_FILE_LINES && !doc.contains(LONG_FILE_REASON)).then(|| {
        format!(
            "{}: {lines} lines of production code; split it by job, or say why not in its module doc (`//! {LONG_FILE_REASON} …`)",
            path.display()
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_spawn_in_library_code_must_be_on_the_tracker_or_owned() {
        let code = "fn f() {\n    tokio::spawn(async {});\n}\n";
        assert_eq!(bare_spawns(Path::new("crates/x/src/a.rs"), code).len(), 1);
        assert!(bare_spawns(Path::new("crates/x/tests/a.rs"), code).is_empty(), "tests may spawn");
        assert!(bare_spawns(Path::new("crates/keel-core/src/shutdown.rs"), code).is_empty(), "the tracker itself");
        assert!(bare_spawns(Path::new("crates/x/src/a.rs"), "//! tokio::spawn(doc)\n").is_empty());
    }

    #[test]
    fn a_long_file_must_say_why() {
        let long = "fn f() {}\n".repeat(MAX_FILE_LINES + 1);
        assert!(too_long(Path::new("crates/x/src/a.rs"), &long).is_some());
        assert!(too_long(Path::new("crates/x/tests/a.rs"), &long).is_none(), "tests are not production code");
        let with_reason = format!("//! A module.\n//! {LONG_FILE_REASON} one state machine.\n{long}");
        assert!(too_long(Path::new("crates/x/src/a.rs"), &with_reason).is_none());
        let tests_after = format!("{}#[cfg(test)]\n{long}", "fn f() {}\n".repeat(10));
        assert!(too_long(Path::new("crates/x/src/a.rs"), &tests_after).is_none(), "test code is not counted");
    }

    #[test]
    fn recognises_lints_and_crate_docs() {
        assert!(has_workspace_lints("[package]\nname='x'\n\n[lints]\nworkspace = true\n"));
        assert!(!has_workspace_lints("[lints.rust]\nunsafe_code = 'forbid'\n"));
        assert!(starts_with_crate_doc("#![forbid(unsafe_code)]\n\n//! Docs.\n"));
        assert!(!starts_with_crate_doc("/// item doc\nfn main() {}\n"));
    }
}
