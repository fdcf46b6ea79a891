//! `cargo xtask schemathesis`: property-based tests of the HTTP API from its
//! own OpenAPI document.
//!
//! Installs schemathesis from PyPI when it is missing, starts the release
//! `api` in embedded mode with an admin token, and runs every check against
//! `/openapi.json`: no server error, every response (and Server-Sent Event)
//! matching its schema, status codes, content types and headers as
//! documented, schema-valid requests accepted (with the exceptions in
//! `xtask/assets/schemathesis.toml`). Fails unless every operation was
//! exercised.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use anyhow::{Context as _, Result, bail};

use crate::servers::Binary;

/// The schemathesis release line the settings file is written for.
const SCHEMATHESIS: &str = "schemathesis>=4.3,<5";
/// Validates the document against the OpenAPI 3.1 meta-schema.
const VALIDATOR: &str = "openapi-spec-validator>=0.7,<1";

/// Runs the suite; `seed` fixes the generated cases (default 1).
pub fn run(root: &Path, seed: Option<&str>) -> Result<()> {
    let st = ensure_installed()?;
    let binaries = crate::cmd::release_binaries(root)?;
    let dir = root.join("target").join("schemathesis");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    let envs = [("KEEL_ADMIN_TOKEN", "schemathesis-token".to_owned()), ("KEEL_DATA_DIR", path_text(&dir.join("data")))];
    let mut api = Binary::spawn(&binaries.api, "--listen", &envs, &dir.join("api.log"))?;
    api.wait_ready(Duration::from_secs(30))?;
    validate_document(&api.addr, &dir)?;
    let output = Command::new(&st)
        .arg("--config-file")
        .arg(root.join("xtask/assets/schemathesis.toml"))
        .args(["run", &format!("http://{}/openapi.json", api.addr)])
        .args(["--header", "Authorization: Bearer schemathesis-token"])
        // One worker: schemathesis' workers are threads, and CPython 3.11's
        // AST constructor keeps its recursion depth in per-interpreter state
        // (python/cpython#106905), so hypothesis parsing lambdas on two
        // threads at once can fail the run with "AST constructor recursion
        // depth mismatch", a tool error rather than a finding (seen in CI).
        .args(["--max-examples", "30", "--workers", "1", "--request-timeout", "5"])
        .args(["--seed", seed.unwrap_or("1")])
        .arg("--report-junit-path")
        .arg(dir.join("junit.xml"))
        .output()
        .with_context(|| format!("cannot run {}", st.display()))?;
    let _ = api.terminate();
    let _ = api.wait_exit(Duration::from_secs(10));
    let text = String::from_utf8_lossy(&output.stdout);
    std::fs::write(dir.join("report.txt"), text.as_bytes())?;
    print_summary(&text);
    if !output.status.success() {
        eprint!("{text}{}", String::from_utf8_lossy(&output.stderr));
        bail!("schemathesis found failures (report: {})", dir.join("report.txt").display());
    }
    every_operation_tested(&text)
}

/// The `SUMMARY` section of schemathesis' output.
fn print_summary(text: &str) {
    let summary = text.split_once("SUMMARY").map_or(text, |(_, rest)| rest);
    for line in summary.lines().filter(|l| !l.trim().is_empty()) {
        eprintln!("schemathesis: {}", line.trim_end());
    }
}

/// `Selected: N/N` and `Tested: N` must agree.
fn every_operation_tested(text: &str) -> Result<()> {
    let field = |name: &str| {
        text.lines().find_map(|l| l.trim().strip_prefix(name).map(|v| v.trim().to_owned())).unwrap_or_default()
    };
    let (selected, tested) = (field("Selected:"), field("Tested:"));
    let total = selected.split('/').next_back().unwrap_or_default();
    if total.is_empty() || total != tested {
        bail!("schemathesis exercised {tested:?} of {selected:?} operations: every operation must be tested");
    }
    Ok(())
}

fn path_text(path: &Path) -> String {
    path.to_string_lossy().into_owned()
}

/// Fetches `/openapi.json` and checks it is a valid OpenAPI 3.1 document.
fn validate_document(addr: &str, dir: &Path) -> Result<()> {
    let (status, body) = crate::chaos::load::get(addr, "/openapi.json")?;
    if status != 200 {
        bail!("GET /openapi.json answered {status}");
    }
    let path = dir.join("openapi.json");
    std::fs::write(&path, body)?;
    let script = "import json, sys\n\
                  from openapi_spec_validator import validate\n\
                  from openapi_spec_validator.validation import OpenAPIV31SpecValidator\n\
                  document = json.load(open(sys.argv[1]))\n\
                  assert document['openapi'].startswith('3.1'), document['openapi']\n\
                  validate(document, cls=OpenAPIV31SpecValidator)\n\
                  print('schemathesis: /openapi.json is a valid OpenAPI', document['openapi'], 'document with', \
                  len(document['paths']), 'paths')";
    crate::cmd::run(Command::new("python3").args(["-c", script]).arg(&path))
}

/// `st`, installed from PyPI with pip when it is not on `PATH`.
fn ensure_installed() -> Result<std::path::PathBuf> {
    if !crate::cmd::on_path("st") {
        eprintln!("xtask: installing {SCHEMATHESIS} from PyPI");
        crate::cmd::run(Command::new("python3").args(["-m", "pip", "install", "--quiet", SCHEMATHESIS]))?;
    }
    let has_validator =
        Command::new("python3").args(["-c", "import openapi_spec_validator"]).status().is_ok_and(|s| s.success());
    if !has_validator {
        crate::cmd::run(Command::new("python3").args(["-m", "pip", "install", "--quiet", VALIDATOR]))?;
    }
    let found = std::env::var_os("PATH")
        .and_then(|paths| std::env::split_paths(&paths).map(|d| d.join("st")).find(|p| p.is_file()));
    found.context("schemathesis installed but `st` is not on PATH")
}

#[cfg(test)]
mod tests {
    #[test]
    fn untested_operations_fail_the_run() {
        assert!(super::every_operation_tested("  Selected: 19/19\n  Tested: 19\n").is_ok());
        assert!(super::every_operation_tested("  Selected: 19/19\n  Tested: 18\n").is_err());
        assert!(super::every_operation_tested("no summary").is_err());
    }
}
