//! Ready to publish: each library crate's manifest carries what a registry
//! and docs.rs need, its README is its crate documentation, `cargo package`
//! accepts it, and its docs build without warnings.
//!
//! The README of each library crate is generated from the `//!` comment at
//! the top of its `src/lib.rs` (`cargo xtask docs` rewrites them; `tidy`
//! fails when one is stale), so what crates.io shows is what docs.rs shows.

use std::path::Path;
use std::process::Command;

use anyhow::{Context as _, Result};

use crate::tidy::Violation;

/// The library crates a user can take on their own.
pub const LIBRARIES: &[&str] = &[
    "keel-core",
    "keel-telemetry",
    "keel-store",
    "keel-health-status",
    "keel-settings-sync",
    "keel-batcher",
    "keel-write-behind",
    "keel-monitoring",
    "keel-entries",
    "keel-http",
];

/// Manifest keys every library crate must set (directly or from the
/// workspace).
const REQUIRED_KEYS: &[&str] = &["description", "license", "readme", "keywords", "categories", "rust-version"];

/// The README generated from a crate's `lib.rs`: its leading `//!` lines,
/// with hidden doc-test lines dropped, doc tests marked as Rust, and
/// intra-doc links (which only rustdoc resolves) kept as their text.
pub fn readme(krate: &str, lib_rs: &str) -> String {
    let mut out = format!("# {krate}\n\n");
    let mut in_code = false;
    for line in lib_rs.lines().map(str::trim_start).skip_while(|l| l.starts_with("#![")) {
        let Some(text) = line.strip_prefix("//!") else { break };
        let text = text.strip_prefix(' ').unwrap_or(text);
        if text.starts_with("```") {
            let opening = !in_code;
            in_code = opening;
            let lang = text.trim_start_matches('`');
            out.push_str(if opening && (lang.is_empty() || lang.starts_with("no_run")) { "```rust" } else { text });
            out.push('\n');
            continue;
        }
        if in_code {
            if text == "#" || text.starts_with("# ") {
                continue;
            }
            out.push_str(text);
        } else if text.starts_with('#') {
            // The crate's name is the title: its sections go one level down.
            out.push('#');
            out.push_str(&plain_links(text));
        } else {
            out.push_str(&plain_links(text));
        }
        out.push('\n');
    }
    out.push_str("\nLicensed under either of Apache License, Version 2.0 or MIT license, at your option.\n");
    out
}

/// `[`Name`]` and `[text](path::to)` (rustdoc links) as `` `Name` `` and
/// `text`; Markdown links to URLs stay.
fn plain_links(line: &str) -> String {
    let mut out = String::new();
    let mut rest = line;
    while let Some(open) = rest.find('[') {
        out.push_str(&rest[..open]);
        let after = &rest[open + 1..];
        let Some(close) = after.find(']') else {
            out.push_str(&rest[open..]);
            return out;
        };
        let text = &after[..close];
        let tail = &after[close + 1..];
        if let Some(target) = tail.strip_prefix('(').and_then(|t| t.find(')').map(|end| &t[..end])) {
            if target.contains("://") || target.starts_with('#') || target.ends_with(".md") {
                out.push_str(&rest[open..open + 1 + close + 1 + target.len() + 2]);
            } else {
                out.push_str(text);
            }
            rest = &tail[target.len() + 2..];
        } else {
            out.push_str(text);
            rest = tail;
        }
    }
    out.push_str(rest);
    out
}

/// Static checks: manifests complete, READMEs current.
pub fn check(root: &Path, found: &mut Vec<Violation>) -> Result<()> {
    let workspace = std::fs::read_to_string(root.join("Cargo.toml"))?;
    if workspace.contains("example.invalid") {
        found.push(Violation { rule: "publish", detail: "Cargo.toml: a placeholder repository URL".into() });
    }
    for krate in LIBRARIES {
        let dir = root.join("crates").join(krate);
        let Ok(manifest) = std::fs::read_to_string(dir.join("Cargo.toml")) else { continue };
        for key in REQUIRED_KEYS {
            let set = manifest
                .lines()
                .any(|l| l.starts_with(&format!("{key} =")) || l.starts_with(&format!("{key}.workspace")));
            if !set {
                found.push(Violation { rule: "publish", detail: format!("{krate}: Cargo.toml sets no `{key}`") });
            }
        }
        if !manifest.contains("[package.metadata.docs.rs]") || !manifest.contains("all-features = true") {
            found.push(Violation {
                rule: "publish",
                detail: format!("{krate}: Cargo.toml lacks docs.rs metadata (all-features, --cfg docsrs)"),
            });
        }
        let lib = std::fs::read_to_string(dir.join("src/lib.rs")).with_context(|| format!("{krate}: no src/lib.rs"))?;
        if std::fs::read_to_string(dir.join("README.md")).ok().as_deref() != Some(readme(krate, &lib).as_str()) {
            found.push(Violation {
                rule: "publish",
                detail: format!("{krate}: README.md is not its crate documentation; run `cargo xtask docs`"),
            });
        }
    }
    Ok(())
}

/// Rewrites each library crate's README from its `lib.rs`.
pub fn write_readmes(root: &Path) -> Result<()> {
    for krate in LIBRARIES {
        let dir = root.join("crates").join(krate);
        let lib = std::fs::read_to_string(dir.join("src/lib.rs"))?;
        std::fs::write(dir.join("README.md"), readme(krate, &lib))?;
    }
    eprintln!("docs: library READMEs written from their crate docs");
    Ok(())
}

/// `cargo package --list` for each library crate (what would be uploaded;
/// fails on a manifest cargo would refuse), and `cargo doc` with warnings
/// denied.
pub fn check_builds(root: &Path) -> Result<()> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    for krate in LIBRARIES {
        let out = Command::new(&cargo)
            .args(["package", "--no-verify", "--list", "--allow-dirty", "--offline", "-p", krate])
            .current_dir(root)
            .output()
            .context("cannot run cargo package")?;
        let listed = String::from_utf8_lossy(&out.stdout);
        if !out.status.success() {
            anyhow::bail!("cargo package -p {krate} failed: {}", String::from_utf8_lossy(&out.stderr));
        }
        for file in ["Cargo.toml", "README.md", "src/lib.rs"] {
            if !listed.lines().any(|l| l == file) {
                anyhow::bail!("cargo package -p {krate} would not include {file}");
            }
        }
    }
    crate::cmd::run(
        Command::new(&cargo)
            .args(["doc", "--no-deps", "--workspace", "--exclude", "xtask"])
            .env("RUSTDOCFLAGS", "-D warnings")
            .current_dir(root),
    )
}

/// The cargo-deny release `supply_chain` installs when none is on `PATH`.
const CARGO_DENY: &str = "cargo-deny@^0.20";

/// `cargo deny check licenses bans sources` against `deny.toml`; then
/// advisories, when the advisory database can be fetched (one line says so
/// when it cannot: this machine may have no route to GitHub).
pub fn supply_chain(root: &Path) -> Result<()> {
    let deny = crate::cmd::cargo_tool(root, "cargo-deny", CARGO_DENY)?;
    crate::cmd::run(Command::new(&deny).args(["check", "licenses", "bans", "sources"]).current_dir(root))?;
    let fetched =
        Command::new(&deny).args(["fetch", "db"]).current_dir(root).output().is_ok_and(|out| out.status.success());
    if fetched {
        crate::cmd::run(Command::new(&deny).args(["check", "advisories"]).current_dir(root))
    } else {
        eprintln!("supply-chain: the advisory database cannot be fetched from here; advisories not checked");
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_readme_is_the_crate_doc_without_hidden_lines_or_rustdoc_links() {
        let lib = "#![forbid(unsafe_code)]\n//! A [`Clock`] and [shutdown](Shutdown), see [the guide](https://x.dev) and [ops](../docs/a.md).\n//!\n//! # Example\n//! ```\n//! # fn main() {\n//! let x = 1;\n//! # }\n//! ```\n\nmod clock;\n";
        let readme = readme("keel-x", lib);
        assert!(readme.starts_with("# keel-x\n\nA `Clock` and shutdown, see [the guide](https://x.dev) and [ops](../docs/a.md).\n\n## Example\n```rust\nlet x = 1;\n```\n"), "{readme}");
    }
}
