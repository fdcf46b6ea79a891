//! The release `api` and `worker` as child processes: started, awaited
//! ready, signalled, killed and restarted.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};

use super::*;

/// A running `api` or `worker`.
pub(crate) struct Binary {
    pub(crate) addr: String,
    child: Child,
    command: Vec<String>,
    envs: Vec<(String, String)>,
    path: PathBuf,
    log: PathBuf,
}

impl Binary {
    /// Starts `path` listening on a free port (`listen_flag`), with `envs`;
    /// its output goes to `log`.
    pub(crate) fn spawn(path: &Path, listen_flag: &str, envs: &[(&str, String)], log: &Path) -> Result<Self> {
        let addr = format!("127.0.0.1:{}", free_port()?);
        let command = vec![listen_flag.to_owned(), addr.clone(), "--log-format".into(), "json".into()];
        let envs: Vec<(String, String)> = envs.iter().map(|(k, v)| ((*k).to_owned(), v.clone())).collect();
        let child = Self::launch(path, &command, &envs, log)?;
        Ok(Self { addr, child, command, envs, path: path.to_path_buf(), log: log.to_path_buf() })
    }

    fn launch(path: &Path, args: &[String], envs: &[(String, String)], log: &Path) -> Result<Child> {
        let out = std::fs::OpenOptions::new().create(true).append(true).open(log)?;
        Command::new(path)
            .args(args)
            .env_remove("DATABASE_URL")
            .env_remove("REDIS_URL")
            .envs(envs.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdout(Stdio::null())
            .stderr(out)
            .spawn()
            .with_context(|| format!("cannot start {}", path.display()))
    }

    /// Waits for `/readyz` to answer 200.
    pub(crate) fn wait_ready(&mut self, limit: Duration) -> Result<()> {
        let (addr, child) = (self.addr.clone(), &mut self.child);
        let mut exited = None;
        let ready = wait_until(limit, || {
            if let Ok(Some(status)) = child.try_wait() {
                exited = Some(status);
                return true;
            }
            crate::chaos::load::get(&addr, "/readyz").is_ok_and(|(status, _)| status == 200)
        });
        if let Some(status) = exited {
            bail!("{} exited with {status} while starting (log: {})", self.path.display(), self.log.display());
        }
        ready.with_context(|| format!("{} on {addr} not ready (log: {})", self.path.display(), self.log.display()))
    }

    pub(crate) fn kill(&mut self) -> Result<()> {
        self.child.kill()?;
        self.child.wait()?;
        Ok(())
    }

    /// Starts the same command again (after [`kill`](Self::kill)).
    pub(crate) fn restart(&mut self) -> Result<()> {
        self.child = Self::launch(&self.path, &self.command, &self.envs, &self.log)?;
        Ok(())
    }

    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends SIGTERM and returns at once.
    pub(crate) fn terminate(&self) -> Result<()> {
        signal(&[self.child.id()], "TERM")
    }

    /// Waits up to `limit` for the process to exit; its exit code.
    pub(crate) fn wait_exit(&mut self, limit: Duration) -> Result<Option<i32>> {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait()? {
                return Ok(status.code());
            }
            if Instant::now() > deadline {
                bail!("{} did not exit within {limit:?}", self.path.display());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGTERM, then waits (SIGKILL after 30 s).
    pub(crate) fn stop(&mut self) {
        if let Ok(Some(_)) = self.child.try_wait() {
            return;
        }
        let _ = Command::new("kill").args(["-TERM", &self.child.id().to_string()]).stderr(Stdio::null()).status();
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.kill();
    }
}

impl Drop for Binary {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
