//! PostgreSQL clusters of our own: `initdb` and `pg_ctl` as the `postgres`
//! user, psql for what a scenario reads.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{Context as _, Result, bail};

use crate::cmd::run;
use crate::services::{find_postgres_tool, is_root, try_install};

use super::*;

/// A PostgreSQL cluster of our own, under `dir`, on its own port.
pub(crate) struct Postgres {
    pub(crate) port: u16,
    /// The cluster's data directory (the server's own files: its user can
    /// write there).
    pub(crate) data: PathBuf,
    log: PathBuf,
    pg_ctl: PathBuf,
}

impl Postgres {
    /// A cluster of its own under `dir` on a free port, stopped when dropped.
    pub(crate) fn start(dir: &Path) -> Result<Self> {
        Self::start_on(dir, free_port()?)
    }

    /// A cluster under `dir` (created by `initdb` with trust auth the first
    /// time) on `port`, stopped when dropped unless [kept](Self::keep).
    pub(crate) fn start_on(dir: &Path, port: u16) -> Result<Self> {
        if find_postgres_tool("initdb").is_none() && !try_install("postgresql")? {
            bail!("no PostgreSQL server is installed: install it (Debian: apt-get install postgresql)");
        }
        let (Some(initdb), Some(pg_ctl)) = (find_postgres_tool("initdb"), find_postgres_tool("pg_ctl")) else {
            bail!("initdb/pg_ctl not found although PostgreSQL seems installed");
        };
        std::fs::create_dir_all(dir)?;
        if is_root() {
            run(Command::new("chown").args(["-R", "postgres"]).arg(dir))?;
        }
        let pg = Self { port, data: dir.join("data"), log: dir.join("postgres.log"), pg_ctl };
        if !pg.data.join("PG_VERSION").exists() {
            run(as_postgres(&initdb)
                .args(["-A", "trust", "-U", "postgres", "-D"])
                .arg(&pg.data)
                .stdout(Stdio::null()))?;
        }
        pg.up()?;
        Ok(pg)
    }

    /// Leaves the server running after this handle is gone.
    pub(crate) fn keep(self) {
        std::mem::forget(self);
    }

    /// Starts the server (again) and waits until it accepts connections.
    pub(crate) fn up(&self) -> Result<()> {
        let options = format!("-p {} -c listen_addresses=127.0.0.1 -k {}", self.port, self.data.display());
        run(as_postgres(&self.pg_ctl)
            .arg("-D")
            .arg(&self.data)
            .arg("-l")
            .arg(&self.log)
            .args(["-o", &options, "-w", "start"])
            .stdout(Stdio::null()))
    }

    /// `pg_ctl stop -m fast`: sessions are terminated, the server exits.
    pub(crate) fn stop_fast(&self) -> Result<()> {
        run(as_postgres(&self.pg_ctl)
            .arg("-D")
            .arg(&self.data)
            .args(["-m", "fast", "-w", "stop"])
            .stdout(Stdio::null()))
    }

    /// The postmaster and every backend of this cluster.
    pub(crate) fn pids(&self) -> Result<Vec<u32>> {
        let pidfile = std::fs::read_to_string(self.data.join("postmaster.pid")).context("postmaster.pid")?;
        let master: u32 = pidfile.lines().next().unwrap_or_default().trim().parse().context("postmaster pid")?;
        let mut pids = vec![master];
        for entry in std::fs::read_dir("/proc")?.filter_map(|e| e.ok()) {
            let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else { continue };
            let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else { continue };
            // pid (comm) state ppid ...: comm may hold spaces, so read after the last ')'.
            let ppid = stat.rsplit_once(')').and_then(|(_, rest)| rest.split_whitespace().nth(1));
            if ppid.and_then(|p| p.parse::<u32>().ok()) == Some(master) {
                pids.push(pid);
            }
        }
        Ok(pids)
    }

    pub(crate) fn url(&self, database: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{database}", self.port)
    }

    /// Runs `sql` with psql; rows as `|`-separated lines.
    pub(crate) fn psql(&self, database: &str, sql: &str) -> Result<String> {
        self.psql_commands(database, &[sql])
    }

    /// Runs `commands` (SQL or `psql` meta-commands such as `\timing on`)
    /// one after the other in one `psql` session; its output.
    pub(crate) fn psql_commands(&self, database: &str, commands: &[&str]) -> Result<String> {
        let out = Command::new("psql")
            .args(["-h", "127.0.0.1", "-p", &self.port.to_string(), "-U", "postgres", "-d", database])
            .args(["-At", "-v", "ON_ERROR_STOP=1"])
            .args(commands.iter().flat_map(|command| ["-c", command]))
            .output()
            .context("cannot run psql")?;
        if !out.status.success() {
            bail!("psql {commands:?}: {}", String::from_utf8_lossy(&out.stderr).trim());
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    pub(crate) fn recreate(&self, database: &str) -> Result<()> {
        self.psql("postgres", &format!("DROP DATABASE IF EXISTS {database} WITH (FORCE)"))?;
        self.psql("postgres", &format!("CREATE DATABASE {database}"))?;
        Ok(())
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        let _ = as_postgres(&self.pg_ctl)
            .arg("-D")
            .arg(&self.data)
            .args(["-m", "immediate", "stop"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

pub(super) fn as_postgres(program: &Path) -> Command {
    if is_root() {
        let mut command = Command::new("runuser");
        command.args(["-u", "postgres", "--"]).arg(program);
        command
    } else {
        Command::new(program)
    }
}
