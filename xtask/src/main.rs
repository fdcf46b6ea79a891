//! `cargo xtask`: Keel's chores. Run `cargo xtask help` for the list.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context as _, Result, bail};
use xtask::{
    alerts, bench, chaos, ci, cmd, console, deploy, docs, publish, reuse, schemathesis, services, tidy, tools,
};

const HELP: &str = "\
cargo xtask <command>

  ci                 fmt check, clippy -D warnings, tidy, reuse, cargo deny,
                     packaging and docs, services up (and the local Redis
                     Cluster), deploy-check, chaos --short, alerts,
                     schemathesis, console, all tests
                     (reuse and the test builds run at the lowest CPU
                     priority beside the steps that mostly wait; their log
                     is target/ci-background.log, printed when they end)
  ci --check-tools   what ci needs on this machine, and what is missing
  test               services up (and the local Redis Cluster), then all tests
  tidy [--static] [--root DIR]
                     architecture and hygiene checks (--static skips the
                     --no-default-features builds)
  services up        make sure PostgreSQL (5432) and Redis (6379) answer,
                     starting installed servers when they do not
  services up --redis-cluster
                     a six-node Redis Cluster (3 masters, 3 replicas) on
                     ports 7101-7106 from the installed redis-server
  services status    report whether they answer
  bench [ARGS..]     run the criterion benchmarks (ARGS go to cargo bench)
  bench http [FILTER] whole requests: release api (embedded and cluster) and
                     worker beside a bare axum baseline, wrk rounds
                     alternated, medians and ratios against targets (report
                     under target/bench/http.json; not part of ci)
  deploy-check       promtool checks and rule tests, dashboards, Kubernetes
                     manifests, every metric they name against a running api
                     and worker, and docs/OPERATIONS.md against the flags
  chaos [--short] [--only NAME]
                     release api + worker against a private PostgreSQL and
                     Redis; one fault per scenario (kill, stop, pause, client
                     reset, concurrent start); fails on any lost, regressed
                     or phantom write (report under target/chaos/)
  alerts             every alert rule against a real Prometheus scraping the
                     release api + worker (rules' durations scaled 1/30);
                     each alert's fault injected, firing and resolution
                     asserted, a healthy period fires nothing (report
                     under target/alerts/)
  reuse [--report] [--only CRATE]
                     each library crate's example built and run from a
                     workspace of its own, once per feature set (defaults,
                     minimal, each feature added, all); dependency trees
                     against their budgets; --report also times clean
                     release builds and rewrites the table in docs/reuse.md
  schemathesis [SEED] property-based tests of the embedded api from its own
                     /openapi.json (installs schemathesis from PyPI; report
                     under target/schemathesis/)
  console            the operator console in headless chromium (installs
                     Debian's chromium and playwright-core/axe-core from
                     npm; screenshots under target/console/)
  docs [--readmes]   regenerate the configuration reference in
                     docs/OPERATIONS.md from the binaries' flags, and each
                     library crate's README from its crate docs (--readmes:
                     only those)
";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("xtask: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: &[String]) -> Result<()> {
    let root = xtask::workspace_root();
    match args.first().map(String::as_str) {
        Some("ci") if args.get(1).is_some_and(|a| a == "--check-tools") => tools::check(),
        Some("ci") => ci(&root),
        Some("ci-background") => ci_background(&root),
        Some("test") => {
            services::up()?;
            services::up_cluster()?;
            test(&root)
        }
        Some("tidy") => run_tidy(&args[1..], &root),
        Some("services") => match args.get(1).map(String::as_str) {
            Some("up") if args.get(2).is_some_and(|a| a == "--redis-cluster") => services::up_cluster(),
            Some("up") => services::up(),
            Some("status") => services::status(),
            _ => bail!("usage: cargo xtask services up [--redis-cluster] | status"),
        },
        Some("deploy-check") => {
            services::up()?;
            deploy::check(&root)
        }
        Some("docs") if args.get(1).is_some_and(|a| a == "--readmes") => publish::write_readmes(&root),
        Some("docs") => docs::update(&root),
        Some("console") => console::run(&root),
        Some("chaos") => chaos::run(&root, &args[1..]),
        Some("alerts") => alerts::run(&root),
        Some("reuse") => reuse::run(&root, &args[1..]),
        Some("schemathesis") => schemathesis::run(&root, args.get(1).map(String::as_str)),
        Some("bench") if args.get(1).is_some_and(|a| a == "http") => {
            bench::http(&root, args.get(2).map(String::as_str))
        }
        Some("bench") => cmd::cargo(&root, &[&["bench", "--workspace"], &as_strs(&args[1..])[..]].concat()),
        Some("help" | "--help" | "-h") | None => {
            eprint!("{HELP}");
            Ok(())
        }
        Some(other) => bail!("unknown command {other:?}\n{HELP}"),
    }
}

fn as_strs(args: &[String]) -> Vec<&str> {
    args.iter().map(String::as_str).collect()
}

fn ci(root: &std::path::Path) -> Result<()> {
    let started = std::time::Instant::now();
    step("fmt", || cmd::cargo(root, &["fmt", "--all", "--", "--check"]))?;
    step("clippy", || cmd::cargo(root, &["clippy", "--workspace", "--all-targets", "--", "-D", "warnings"]))?;
    step("tidy", || run_tidy(&[], root))?;
    step("supply-chain", || publish::supply_chain(root))?;
    step("publish", || publish::check_builds(root))?;
    // From here on the foreground mostly waits (for a release build's
    // single-crate stretches, the lab's faults, Prometheus's `for:` windows,
    // a browser): reuse and the test builds use what CPU it leaves.
    let background = ci::Background::start(root)?;
    step("services", || services::up().and_then(|()| services::up_cluster()))?;
    step("deploy-check", || deploy::check(root))?;
    step("chaos --short", || chaos::run(root, &["--short".to_owned()]))?;
    step("alerts", || alerts::run(root))?;
    step("schemathesis", || schemathesis::run(root, None))?;
    step("console", || console::run(root))?;
    step("reuse and test builds (background)", || background.join())?;
    step("test", || test(root))?;
    eprintln!("xtask: ci passed in {:.0?}", started.elapsed());
    Ok(())
}

/// What `ci` runs in the background: reuse, then every test binary built
/// (not run: the tests need the services and run last, in the foreground).
fn ci_background(root: &std::path::Path) -> Result<()> {
    ci::stop_with_parent();
    step("reuse", || reuse::run(root, &[]))?;
    step("test builds", || {
        cmd::cargo(root, &["test", "--workspace", "--no-run"])?;
        cmd::cargo(root, &["test", "-p", "api", "--features", "otlp", "--test", "otlp", "--no-run"])
    })
}

fn step(name: &str, f: impl FnOnce() -> Result<()>) -> Result<()> {
    eprintln!("xtask: == {name} ==");
    let started = std::time::Instant::now();
    f().with_context(|| format!("step {name} failed"))?;
    eprintln!("xtask: {name} ok ({:.0?})", started.elapsed());
    Ok(())
}

fn test(root: &std::path::Path) -> Result<()> {
    cmd::cargo(root, &["test", "--workspace"])?;
    // Trace export is feature-gated so the default build stays lean; its
    // end-to-end test needs the binary built with it.
    cmd::cargo(root, &["test", "-p", "api", "--features", "otlp", "--test", "otlp"])
}

fn run_tidy(args: &[String], default_root: &std::path::Path) -> Result<()> {
    let mut root = default_root.to_path_buf();
    let mut builds = true;
    let mut rest = args.iter();
    while let Some(arg) = rest.next() {
        match arg.as_str() {
            "--static" => builds = false,
            "--root" => root = PathBuf::from(rest.next().context("--root needs a directory")?),
            other => bail!("unknown tidy option {other:?}"),
        }
    }
    let violations = tidy::check(&root)?;
    if !violations.is_empty() {
        for v in &violations {
            eprintln!("tidy: {v}");
        }
        bail!("{} tidy violation(s)", violations.len());
    }
    if builds {
        tidy::check_lean_http(&root)?;
        tidy::check_unused_dependencies(&root)?;
        tidy::check_feature_builds(&root)?;
    }
    eprintln!("tidy: ok");
    Ok(())
}
