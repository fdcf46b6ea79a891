//! Tidy runs as a test, and fails on planted violations.

// Helpers outside #[test] functions unwrap too: a failed set-up is a failed test.
#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::process::Command;

#[test]
fn the_workspace_is_tidy() {
    let violations = xtask::tidy::check(&xtask::workspace_root()).unwrap();
    let listed: Vec<String> = violations.iter().map(ToString::to_string).collect();
    assert!(violations.is_empty(), "tidy violations:\n{}", listed.join("\n"));
}

fn write(path: &Path, text: &str) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, text).unwrap();
}

fn manifest(name: &str, deps: &str, lints: bool) -> String {
    let lints = if lints { "\n[lints]\nworkspace = true\n" } else { "" };
    format!("[package]\nname = \"{name}\"\nversion = \"0.1.0\"\nedition = \"2021\"\n\n[dependencies]\n{deps}\n{lints}")
}

/// `manifest` with what the `publish` rule asks of a library crate.
fn publishable(manifest: &str) -> String {
    let keys = "description = \"x\"\nlicense = \"MIT\"\nreadme = \"README.md\"\nkeywords = []\ncategories = []\nrust-version = \"1.95\"\n";
    let docs = "\n[package.metadata.docs.rs]\nall-features = true\n";
    manifest.replacen("edition = \"2021\"\n", &format!("edition = \"2021\"\n{keys}"), 1) + docs
}

#[test]
fn cargo_xtask_tidy_fails_on_planted_violations() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    write(
        &root.join("Cargo.toml"),
        "[workspace]\nmembers = [\"crates/*\"]\nresolver = \"2\"\n[workspace.lints.rust]\nunsafe_code = \"forbid\"\n",
    );
    // keel-core reaching up to keel-store breaks the dependency direction.
    write(
        &root.join("crates/keel-core/Cargo.toml"),
        &manifest("keel-core", "keel-store = { path = \"../keel-store\" }", true),
    );
    write(&root.join("crates/keel-core/src/lib.rs"), "//! Core.\n");
    // keel-store without workspace lints and without a crate doc, and with a placeholder.
    write(&root.join("crates/keel-store/Cargo.toml"), &manifest("keel-store", "", false));
    let placeholder = format!("pub fn later() {{ {}!() }}\n", "todo");
    write(&root.join("crates/keel-store/src/lib.rs"), &placeholder);
    // An ignored test.
    write(&root.join("crates/keel-store/tests/t.rs"), &format!("#[test]\n#[{}]\nfn skipped() {{}}\n", "ignore"));
    // A workflow that installs PostgreSQL but not Redis.
    write(&root.join(".github/workflows/ci.yml"), "steps:\n  - run: apt-get install -y postgresql\n");

    let out =
        Command::new(env!("CARGO_BIN_EXE_xtask")).args(["tidy", "--static", "--root"]).arg(root).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "tidy must fail:\n{stderr}");
    for expected in [
        "[dependency-direction] keel-core (normal dependency) must not depend on keel-store",
        "[lints] keel-store",
        "[crate-docs] keel-store",
        "placeholder macro",
        "ignored test",
        "[workflow] .github/workflows/ci.yml does not install redis-server",
        "[publish] keel-store: Cargo.toml sets no `description`",
        "[publish] keel-core: README.md is not its crate documentation",
        "tidy violation(s)",
    ] {
        assert!(stderr.contains(expected), "missing {expected:?} in:\n{stderr}");
    }

    // Fixing them makes it pass.
    write(&root.join("crates/keel-core/Cargo.toml"), &publishable(&manifest("keel-core", "", true)));
    write(
        &root.join("crates/keel-store/Cargo.toml"),
        &publishable(&manifest("keel-store", "keel-core = { path = \"../keel-core\" }", true)),
    );
    write(&root.join("crates/keel-store/src/lib.rs"), "//! Store.\npub fn now() {}\n");
    for (name, lib) in [("keel-core", "//! Core.\n"), ("keel-store", "//! Store.\npub fn now() {}\n")] {
        write(&root.join("crates").join(name).join("README.md"), &xtask::publish::readme(name, lib));
    }
    std::fs::remove_file(root.join("crates/keel-store/tests/t.rs")).unwrap();
    std::fs::remove_file(root.join(".github/workflows/ci.yml")).unwrap();
    let out =
        Command::new(env!("CARGO_BIN_EXE_xtask")).args(["tidy", "--static", "--root"]).arg(root).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}
