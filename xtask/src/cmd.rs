//! Running child processes loudly.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context as _, Result, bail};

/// Runs `cargo ARGS` in `root`, inheriting output; fails on a non-zero exit.
pub fn cargo(root: &Path, args: &[&str]) -> Result<()> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    run(Command::new(cargo).args(args).current_dir(root))
}

/// The release `api` and `worker`, built once for every chore that runs
/// them (`deploy-check`, `chaos`, `schemathesis`, `console`, `bench http`,
/// `docs`): built together, with the same packages selected, their
/// dependencies get the same features each time, so only the first chore
/// compiles anything.
#[derive(Debug, Clone)]
pub struct Binaries {
    /// `target/release/api`.
    pub api: PathBuf,
    /// `target/release/worker`.
    pub worker: PathBuf,
}

/// Builds [`Binaries`] (a no-op when they are up to date) and names them.
pub fn release_binaries(root: &Path) -> Result<Binaries> {
    cargo(root, &["build", "--release", "-p", "api", "-p", "worker"])?;
    let release =
        std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| root.join("target"), PathBuf::from).join("release");
    Ok(Binaries { api: release.join("api"), worker: release.join("worker") })
}

/// Runs a command, inheriting output; fails on a non-zero exit.
pub fn run(command: &mut Command) -> Result<()> {
    let shown = format!("{command:?}");
    eprintln!("xtask: $ {shown}");
    let status = command.status().with_context(|| format!("cannot run {shown}"))?;
    if !status.success() {
        bail!("{shown} failed with {status}");
    }
    Ok(())
}

/// A tool installed with `cargo install`: from `PATH` when it is there,
/// otherwise from `target/tools/bin` (kept with the build cache, so a
/// machine that keeps `target/` compiles it once), installed there with
/// `cargo install --locked SPEC` when missing.
pub fn cargo_tool(root: &Path, program: &str, spec: &str) -> Result<PathBuf> {
    if on_path(program) {
        return Ok(PathBuf::from(program));
    }
    let tools = std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| root.join("target"), PathBuf::from).join("tools");
    let binary = tools.join("bin").join(program);
    if !binary.is_file() {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        run(Command::new(cargo).args(["install", "--locked", "--root"]).arg(&tools).arg(spec))?;
    }
    Ok(binary)
}

/// Whether `program` is on `PATH`.
pub fn on_path(program: &str) -> bool {
    std::env::var_os("PATH").is_some_and(|paths| std::env::split_paths(&paths).any(|dir| dir.join(program).is_file()))
}
