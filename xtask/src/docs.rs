//! `cargo xtask docs`: the configuration reference in `docs/OPERATIONS.md`,
//! generated from the binaries' clap definitions (their `--help`), and the
//! drift check that `deploy-check` runs; and each library crate's README,
//! generated from its crate documentation ([`crate::publish`]).

use std::path::Path;
use std::process::Command;

use anyhow::{Context as _, Result, bail};

const BEGIN: &str = "<!-- BEGIN GENERATED: cargo xtask docs -->";
const END: &str = "<!-- END GENERATED -->";

/// One option of a binary's `--help`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Flag {
    /// `--listen <ADDR>`.
    pub flag: String,
    /// `KEEL_LISTEN`, when the option reads one.
    pub env: Option<String>,
    /// The default, when there is one.
    pub default: Option<String>,
    /// The help text.
    pub help: String,
}

/// The options of a clap `--help` text (help and version left out).
pub fn parse_help(help: &str) -> Vec<Flag> {
    let mut flags = Vec::new();
    for line in help.lines() {
        let line = line.trim_start();
        if !line.starts_with("--") || line.starts_with("--help") || line.starts_with("--version") {
            continue;
        }
        let (flag, rest) = line.split_once("  ").unwrap_or((line, ""));
        let mut help = rest.trim().to_owned();
        let mut take = |key: &str| -> Option<String> {
            let start = help.find(&format!("[{key}: "))?;
            let end = start + help[start..].find(']')?;
            let value = help[start + key.len() + 3..end].to_owned();
            help.replace_range(start..=end, "");
            Some(value)
        };
        // clap shows `[env: NAME=value]` with the current value: keep the name only.
        let env = take("env").map(|e| e.split('=').next().unwrap_or_default().to_owned());
        let default = take("default");
        flags.push(Flag { flag: flag.trim().to_owned(), env, default, help: help.trim().to_owned() });
    }
    flags
}

/// The Markdown table of both binaries' options.
pub fn render(api_help: &str, worker_help: &str) -> String {
    let (api, worker) = (parse_help(api_help), parse_help(worker_help));
    let mut out = String::from("| flag | environment | default | binaries | meaning |\n|---|---|---|---|---|\n");
    let mut seen = Vec::new();
    for flag in api.iter().chain(&worker) {
        if seen.contains(&flag.flag) {
            continue;
        }
        seen.push(flag.flag.clone());
        let in_api = api.iter().any(|f| f.flag == flag.flag);
        let in_worker = worker.iter().any(|f| f.flag == flag.flag);
        let binaries = match (in_api, in_worker) {
            (true, true) => "both",
            (true, false) => "api",
            _ => "worker",
        };
        let cell = |v: &Option<String>| v.as_deref().map_or_else(|| "—".to_owned(), |v| format!("`{v}`"));
        out.push_str(&format!(
            "| `{}` | {} | {} | {binaries} | {} |\n",
            flag.flag,
            cell(&flag.env),
            cell(&flag.default),
            flag.help.replace('|', "\\|")
        ));
    }
    out
}

fn help_of(binary: &Path) -> Result<String> {
    // A clean environment: clap would print the current value of each variable.
    let output = Command::new(binary)
        .arg("--help")
        .env_clear()
        .output()
        .with_context(|| format!("cannot run {} --help", binary.display()))?;
    if !output.status.success() {
        bail!("{} --help failed", binary.display());
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

fn generated(root: &Path) -> Result<String> {
    let binaries = crate::cmd::release_binaries(root)?;
    Ok(render(&help_of(&binaries.api)?, &help_of(&binaries.worker)?))
}

/// `text` with the generated section replaced by `table`.
pub fn splice(text: &str, table: &str) -> Result<String> {
    let start = text.find(BEGIN).context("docs/OPERATIONS.md has no generated-section start marker")?;
    let end = text.find(END).context("docs/OPERATIONS.md has no generated-section end marker")?;
    Ok(format!("{}{BEGIN}\n{table}{}", &text[..start], &text[end..]))
}

/// Rewrites the generated section of `docs/OPERATIONS.md`.
pub fn update(root: &Path) -> Result<()> {
    let path = root.join("docs/OPERATIONS.md");
    let text = std::fs::read_to_string(&path).with_context(|| format!("cannot read {}", path.display()))?;
    std::fs::write(&path, splice(&text, &generated(root)?)?)?;
    eprintln!("docs: {} updated", path.display());
    crate::publish::write_readmes(root)
}

/// Fails when `docs/OPERATIONS.md` does not match the binaries' options.
pub fn check(root: &Path) -> Result<()> {
    let path = root.join("docs/OPERATIONS.md");
    let text = std::fs::read_to_string(&path).with_context(|| format!("cannot read {}", path.display()))?;
    if splice(&text, &generated(root)?)? != text {
        bail!("docs/OPERATIONS.md is out of date with the binaries' flags: run `cargo xtask docs`");
    }
    Ok(())
}
