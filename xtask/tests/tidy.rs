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
        "tidy violation(s)",
    ] {
        assert!(stderr.contains(expected), "missing {expected:?} in:\n{stderr}");
    }

    // Fixing them makes it pass.
    write(&root.join("crates/keel-core/Cargo.toml"), &manifest("keel-core", "", true));
    write(
        &root.join("crates/keel-store/Cargo.toml"),
        &manifest("keel-store", "keel-core = { path = \"../keel-core\" }", true),
    );
    write(&root.join("crates/keel-store/src/lib.rs"), "//! Store.\npub fn now() {}\n");
    std::fs::remove_file(root.join("crates/keel-store/tests/t.rs")).unwrap();
    let out =
        Command::new(env!("CARGO_BIN_EXE_xtask")).args(["tidy", "--static", "--root"]).arg(root).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}
