//! The checks that build: `keel-http` lean without features, no unused
//! dependency (cargo-machete), every library crate linted per feature set.

use std::path::Path;
use std::process::Command;

use anyhow::{Context as _, Result, bail};

use super::*;

/// The crates below `keel-http` that it must not pull in without a router
/// feature: every library crate but the lean core and itself.
fn functional() -> impl Iterator<Item = &'static str> {
    crate::publish::LIBRARIES
        .iter()
        .copied()
        .filter(|name| !matches!(*name, "keel-core" | "keel-telemetry" | "keel-http"))
}

/// `keel-http` with no feature (the middleware, `ApiError`, `/metrics`, the
/// server) depends on no functional crate nor on keel-store.
pub fn check_lean_http(root: &Path) -> Result<()> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = Command::new(cargo)
        .args(["tree", "--offline", "-e", "normal", "--no-default-features", "-p", "keel-http", "--prefix", "none"])
        .current_dir(root)
        .output()
        .context("cannot run cargo tree")?;
    if !out.status.success() {
        bail!("cargo tree failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    let tree = String::from_utf8_lossy(&out.stdout);
    let pulled: Vec<&str> =
        functional().filter(|name| tree.lines().any(|l| l.starts_with(&format!("{name} ")))).collect();
    if !pulled.is_empty() {
        bail!("keel-http without features depends on {}: the middleware alone must not", pulled.join(", "));
    }
    Ok(())
}

/// Fails on a dependency no code uses (cargo-machete, installed from
/// crates.io under `target/tools` when missing).
pub fn check_unused_dependencies(root: &Path) -> Result<()> {
    let machete = crate::cmd::cargo_tool(root, "cargo-machete", "cargo-machete@^0.9")?;
    crate::cmd::run(Command::new(machete).arg(root))
}

/// Lints every library crate with `--no-default-features`, then with each of
/// its features alone, then with all of them (warnings denied), proving each
/// backend builds by itself, nothing depends on another being on, and all
/// of them build together.
pub fn check_feature_builds(root: &Path) -> Result<()> {
    let metadata = metadata(root)?;
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    for package in metadata["packages"].as_array().into_iter().flatten() {
        let name = package["name"].as_str().unwrap_or_default();
        let is_lib = package["targets"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|t| t["kind"].as_array().into_iter().flatten().any(|k| k == "lib"));
        if !is_lib || name == "xtask" {
            continue;
        }
        let features: Vec<&str> = package["features"]
            .as_object()
            .map(|f| f.keys().map(String::as_str).filter(|f| !matches!(*f, "default" | "testing")).collect())
            .unwrap_or_default();
        // No features, each feature alone, then all of them together (what
        // docs.rs builds, and what `all-features = true` in deny.toml checks).
        let alone = std::iter::once(vec!["--no-default-features"])
            .chain(features.into_iter().map(|f| vec!["--no-default-features", "--features", f]))
            .chain(std::iter::once(vec!["--all-features"]));
        for selection in alone {
            let mut args = vec!["clippy", "--quiet", "-p", name, "--lib"];
            args.extend(selection);
            args.extend(["--", "-D", "warnings"]);
            crate::cmd::run(Command::new(&cargo).args(&args).current_dir(root))?;
        }
    }
    Ok(())
}
