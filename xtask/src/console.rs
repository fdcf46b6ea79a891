//! `cargo xtask console`: the operator console in a real browser.
//!
//! Installs Debian's `chromium` when it is missing (as root with apt; no
//! browser download), installs `playwright-core` and `axe-core` from npm
//! (versions pinned by `xtask/console/package-lock.json`) under
//! `target/console-node/`, builds the release `api`, and runs
//! `xtask/console/scenarios.mjs`: the page loads with every component, a
//! closed port turns KO within 3 s with its transition in the history, a
//! settings edit saves with its diff and a stale one shows the 412 message,
//! a log record reaches the tail, instance cards draw sparklines, axe-core
//! finds nothing serious, no console error. Screenshots of each view at
//! 1280 and 390 px land in `target/console/`.

use std::path::Path;
use std::process::Command;

use anyhow::{Context as _, Result, bail};

use crate::cmd;

const CHROMIUM: &str = "/usr/bin/chromium";

/// Runs the scenarios.
pub fn run(root: &Path) -> Result<()> {
    if !Path::new(CHROMIUM).is_file() && !crate::services::install("chromium")? {
        bail!(
            "{CHROMIUM} is missing and cannot be installed here: install Debian's chromium package (apt-get install chromium)"
        );
    }
    if !cmd::on_path("node") || !cmd::on_path("npm") {
        bail!(
            "node and npm are needed for the console's browser tests: install Node.js 20 or later (Debian: apt-get install nodejs npm)"
        );
    }
    let modules = root.join("target").join("console-node");
    install_modules(root, &modules)?;
    let binaries = cmd::release_binaries(root)?;
    cmd::run(
        Command::new("node")
            .arg(root.join("xtask/console/scenarios.mjs"))
            .arg("--api")
            .arg(&binaries.api)
            .arg("--out")
            .arg(root.join("target/console"))
            .arg("--modules")
            .arg(&modules)
            .env("CHROMIUM", CHROMIUM),
    )
    .context("the console scenarios failed (api log and screenshots: target/console/)")
}

/// `npm ci` from the committed lock file, skipped when the installed lock
/// is the same.
fn install_modules(root: &Path, modules: &Path) -> Result<()> {
    let source = root.join("xtask/console");
    let lock = std::fs::read(source.join("package-lock.json")).context("xtask/console/package-lock.json")?;
    let installed = modules.join("node_modules/.package-lock.json");
    if std::fs::read(modules.join("package-lock.json")).is_ok_and(|l| l == lock) && installed.is_file() {
        return Ok(());
    }
    std::fs::create_dir_all(modules)?;
    for file in ["package.json", "package-lock.json"] {
        std::fs::copy(source.join(file), modules.join(file)).with_context(|| format!("copy {file}"))?;
    }
    cmd::run(Command::new("npm").args(["ci", "--no-audit", "--no-fund", "--loglevel=error"]).current_dir(modules))
}
