//! The part of `cargo xtask ci` that runs beside the others: reuse's
//! builds and the test binaries, at the lowest CPU priority, while the
//! foreground steps mostly wait.

use std::fs::File;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};

use anyhow::{Context as _, Result, bail};

/// `cargo xtask ci-background` running under `nice -n 19` in a process
/// group of its own, its output in a file.
#[derive(Debug)]
pub struct Background {
    child: Option<Child>,
    log: PathBuf,
}

impl Background {
    /// Starts it; its log is `target/ci-background.log`.
    pub fn start(root: &Path) -> Result<Self> {
        let target = std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| root.join("target"), PathBuf::from);
        std::fs::create_dir_all(&target)?;
        let log = target.join("ci-background.log");
        let out = File::create(&log).with_context(|| format!("cannot create {}", log.display()))?;
        let xtask = std::env::current_exe().context("cannot find the running xtask")?;
        eprintln!("xtask: reuse and the test builds start in the background (log: {})", log.display());
        let child = Command::new("nice")
            .args(["-n", "19"])
            .arg(xtask)
            .arg("ci-background")
            .current_dir(root)
            .stdout(out.try_clone()?)
            .stderr(out)
            .process_group(0)
            .spawn()
            .context("cannot start `nice -n 19 xtask ci-background`")?;
        Ok(Self { child: Some(child), log })
    }

    /// Waits for it to end, prints its log, and fails when it failed.
    pub fn join(mut self) -> Result<()> {
        let Some(mut child) = self.child.take() else { bail!("the background steps were already joined") };
        let status = child.wait().context("cannot wait for the background steps")?;
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        eprint!("{text}");
        if !status.success() {
            bail!("the background steps failed with {status} (log above, and in {})", self.log.display());
        }
        Ok(())
    }
}

impl Drop for Background {
    /// A foreground step failed first: stop the background's whole group.
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = Command::new("kill").args(["-TERM", "--", &format!("-{}", child.id())]).status();
            let _ = child.wait();
        }
    }
}

/// In the background process: ends its whole process group (the cargo
/// builds under it) once the `ci` that started it is gone, whether it
/// failed, was interrupted (a Ctrl-C reaches only the terminal's
/// foreground group) or was killed.
pub fn stop_with_parent() {
    let parent = std::os::unix::process::parent_id();
    std::thread::spawn(move || {
        loop {
            std::thread::sleep(std::time::Duration::from_secs(1));
            if std::os::unix::process::parent_id() != parent {
                let group = format!("-{}", std::process::id());
                let _ = Command::new("kill").args(["-TERM", "--", &group]).status();
                std::process::exit(1);
            }
        }
    });
}
