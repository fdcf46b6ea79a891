//! The one list of what `cargo xtask ci` needs on the machine, step by step,
//! and how a fresh machine gets each tool. `cargo xtask ci --check-tools`
//! prints what is missing; a test checks that `.github/workflows/ci.yml`
//! installs every tool that xtask does not install itself.

use std::path::Path;

use anyhow::{Result, bail};

/// How a fresh machine gets a tool.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Install {
    /// A rustup component of the toolchain.
    Rustup(&'static str),
    /// A Debian package (`apt-get install`); the workflow installs it.
    Debian(&'static str),
    /// A workflow action (`uses:`), for what Debian's version is too old.
    Action(&'static str),
    /// Installed by xtask itself when missing (`cargo install` or `pip`).
    Xtask(&'static str),
}

/// A program some step of `ci` runs.
#[derive(Debug, Clone, Copy)]
pub struct Tool {
    /// The program looked for on `PATH` (PostgreSQL's under
    /// `/usr/lib/postgresql/*/bin` too).
    pub program: &'static str,
    /// How it is installed.
    pub install: Install,
    /// The `ci` steps that run it.
    pub steps: &'static [&'static str],
}

/// Everything `cargo xtask ci` runs besides cargo and rustc.
pub const TOOLS: &[Tool] = &[
    Tool { program: "rustfmt", install: Install::Rustup("rustfmt"), steps: &["fmt"] },
    Tool { program: "cargo-clippy", install: Install::Rustup("clippy"), steps: &["clippy", "tidy"] },
    Tool {
        program: "cargo-machete",
        install: Install::Xtask("cargo install --root target/tools cargo-machete"),
        steps: &["tidy"],
    },
    Tool {
        program: "cargo-deny",
        install: Install::Xtask("cargo install --root target/tools cargo-deny"),
        steps: &["supply-chain"],
    },
    Tool { program: "initdb", install: Install::Debian("postgresql"), steps: &["services", "chaos --short", "alerts"] },
    Tool { program: "pg_ctl", install: Install::Debian("postgresql"), steps: &["chaos --short", "alerts"] },
    Tool {
        program: "redis-server",
        install: Install::Debian("redis-server"),
        steps: &["services", "chaos --short", "alerts"],
    },
    Tool { program: "redis-cli", install: Install::Debian("redis-server"), steps: &["services", "chaos --short"] },
    Tool { program: "promtool", install: Install::Debian("prometheus"), steps: &["deploy-check", "alerts"] },
    Tool { program: "prometheus", install: Install::Debian("prometheus"), steps: &["alerts"] },
    Tool { program: "python3", install: Install::Debian("python3-pip"), steps: &["deploy-check", "schemathesis"] },
    Tool { program: "st", install: Install::Xtask("pip install schemathesis"), steps: &["schemathesis"] },
    Tool { program: "chromium", install: Install::Debian("chromium"), steps: &["console"] },
    Tool { program: "node", install: Install::Action("actions/setup-node"), steps: &["console"] },
    Tool { program: "npm", install: Install::Action("actions/setup-node"), steps: &["console"] },
];

/// Whether `program` can be run here (PostgreSQL's tools where Debian puts
/// them, as the steps that run them look).
pub fn present(program: &str) -> bool {
    crate::cmd::on_path(program)
        || (matches!(program, "initdb" | "pg_ctl") && crate::services::find_postgres_tool(program).is_some())
}

/// `cargo xtask ci --check-tools`: one line per missing tool with the steps
/// that need it and how to get it; fails when a tool xtask cannot install
/// itself is missing.
pub fn check() -> Result<()> {
    // As root with apt in CI, the steps install their Debian packages themselves.
    let apt_here = std::env::var_os("CI").is_some() && crate::services::is_root() && crate::cmd::on_path("apt-get");
    let mut blocking = 0;
    for tool in TOOLS.iter().filter(|t| !present(t.program)) {
        let how = match tool.install {
            Install::Rustup(component) => format!("rustup component add {component}"),
            Install::Debian(package) if apt_here => format!("apt-get install {package} (xtask does it: root in CI)"),
            Install::Debian(package) => format!("apt-get install {package}"),
            Install::Action(action) => format!("the workflow's `uses: {action}` (Node.js 20 or later)"),
            Install::Xtask(command) => format!("xtask runs `{command}` itself"),
        };
        let installed_by_xtask = match tool.install {
            Install::Xtask(_) => true,
            Install::Debian(_) => apt_here,
            Install::Rustup(_) | Install::Action(_) => false,
        };
        if !installed_by_xtask {
            blocking += 1;
        }
        eprintln!("tools: missing {:<14} needed by {:<32} get it with: {how}", tool.program, tool.steps.join(", "));
    }
    if blocking > 0 {
        bail!("{blocking} tool(s) that ci needs are missing");
    }
    eprintln!("tools: everything ci needs is here (or installed by xtask when first needed)");
    Ok(())
}

/// What the workflow at `path` fails to install: each Debian package,
/// rustup component and action of [`TOOLS`] must appear in it.
pub fn missing_from_workflow(path: &Path) -> Result<Vec<String>> {
    let workflow = std::fs::read_to_string(path)?;
    let installs: Vec<&str> = workflow.lines().filter(|l| l.contains("apt-get install")).collect();
    let mut missing = Vec::new();
    for tool in TOOLS {
        let found = match tool.install {
            Install::Debian(package) => installs.iter().any(|l| l.split_whitespace().any(|w| w == package)),
            Install::Rustup(component) => workflow.lines().any(|l| l.contains("components:") && l.contains(component)),
            Install::Action(action) => workflow
                .lines()
                .any(|l| l.trim_start().trim_start_matches("- ").starts_with(&format!("uses: {action}@"))),
            Install::Xtask(_) => true,
        };
        if !found {
            missing.push(format!("{} ({:?})", tool.program, tool.install));
        }
    }
    Ok(missing)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_workflow_installs_every_tool_ci_needs() {
        let workflow = crate::workspace_root().join(".github/workflows/ci.yml");
        let missing = missing_from_workflow(&workflow).expect("the workflow is readable");
        assert!(missing.is_empty(), ".github/workflows/ci.yml does not install: {missing:?}");
    }

    #[test]
    fn a_workflow_without_a_package_is_caught() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("ci.yml");
        std::fs::write(&path, "steps:\n  - run: apt-get install -y postgresql\n").expect("write");
        let missing = missing_from_workflow(&path).expect("readable");
        assert!(missing.iter().any(|m| m.starts_with("redis-server")), "{missing:?}");
        assert!(!missing.iter().any(|m| m.starts_with("initdb")), "{missing:?}");
    }
}
