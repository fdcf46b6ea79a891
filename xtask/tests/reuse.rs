//! `reuse` catches what a workspace hides: a crate that uses a feature of
//! its dependency without asking for it builds inside a workspace where a
//! sibling enables that feature, and fails from a package of its own.

// Helpers outside #[test] functions unwrap too: a failed set-up is a failed test.
#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::process::Command;

use xtask::reuse::{FeatureSet, Scratch};

fn write(path: &Path, text: &str) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, text).unwrap();
}

fn package(name: &str, deps: &str) -> String {
    format!("[package]\nname = \"{name}\"\nversion = \"0.1.0\"\nedition = \"2024\"\n\n[dependencies]\n{deps}\n")
}

#[test]
fn a_feature_only_a_sibling_enables_is_caught_from_outside() {
    let dir = tempfile::tempdir().unwrap();
    let ws = dir.path().join("ws");
    write(&ws.join("Cargo.toml"), "[workspace]\nmembers = [\"dep\", \"a\", \"b\"]\nresolver = \"2\"\n");
    write(&ws.join("dep/Cargo.toml"), &format!("{}\n[features]\nextra = []\n", package("dep", "")));
    write(&ws.join("dep/src/lib.rs"), "#[cfg(feature = \"extra\")]\npub fn extra() -> u32 { 7 }\n");
    // `a` calls `dep::extra` but forgets to ask for the feature; `b` asks.
    write(&ws.join("a/Cargo.toml"), &package("a", "dep = { path = \"../dep\" }"));
    write(&ws.join("a/src/lib.rs"), "pub fn answer() -> u32 { dep::extra() }\n");
    write(&ws.join("a/examples/show.rs"), "fn main() { assert_eq!(a::answer(), 7); }\n");
    write(&ws.join("b/Cargo.toml"), &package("b", "dep = { path = \"../dep\", features = [\"extra\"] }"));
    write(&ws.join("b/src/lib.rs"), "");

    let target = dir.path().join("target");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let in_workspace = Command::new(&cargo)
        .args(["build", "--quiet", "--workspace", "--examples"])
        .env("CARGO_TARGET_DIR", &target)
        .current_dir(&ws)
        .status()
        .unwrap();
    assert!(in_workspace.success(), "inside the workspace the defect is hidden");

    let (crate_dir, source) = (ws.join("a"), ws.join("a/examples/show.rs"));
    let scratch =
        Scratch { krate: "a", name: "show", crate_dir: &crate_dir, source: &source, deps: vec![], lock: None };
    let default = FeatureSet { features: None };
    let outside = dir.path().join("outside");
    assert!(scratch.build_and_run(&outside, &target, &default).is_err(), "from outside, `a` must fail to build");

    // Asking for the feature fixes it, and the same check passes.
    write(&ws.join("a/Cargo.toml"), &package("a", "dep = { path = \"../dep\", features = [\"extra\"] }"));
    scratch.build_and_run(&outside, &target, &default).unwrap();
}
