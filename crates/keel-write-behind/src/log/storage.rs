//! The files a local log lives in, behind a small trait so crash-consistency
//! tests can drop what was never synced and tear the last write.

use std::collections::HashSet;
use std::fs::{File, OpenOptions};
use std::io::{self, Write as _};
use std::path::{Path, PathBuf};

/// A flat directory of files, as the log uses it. Every method blocks.
///
/// What the log relies on: bytes given to [`append`](Storage::append) are
/// durable (content and the file's existence) once [`sync`](Storage::sync)
/// of that file returns; [`replace`](Storage::replace) is atomic and durable
/// when it returns; anything not synced may be lost, and the last unsynced
/// write may be torn at any byte.
pub trait Storage: Send + 'static {
    /// The names of the files in the directory.
    fn list(&self) -> io::Result<Vec<String>>;
    /// The whole content of `name`.
    fn read(&self, name: &str) -> io::Result<Vec<u8>>;
    /// Appends `data` to `name`, creating it if missing.
    fn append(&mut self, name: &str, data: &[u8]) -> io::Result<()>;
    /// Makes `name`'s content (and, for a new file, its directory entry)
    /// durable: `fdatasync`.
    fn sync(&mut self, name: &str) -> io::Result<()>;
    /// Cuts `name` to `len` bytes and makes that durable.
    fn truncate(&mut self, name: &str, len: u64) -> io::Result<()>;
    /// Replaces `name` with `data` atomically and durably (write a
    /// temporary file, sync it, rename it over, sync the directory).
    fn replace(&mut self, name: &str, data: &[u8]) -> io::Result<()>;
    /// Removes `name`.
    fn remove(&mut self, name: &str) -> io::Result<()>;
}

/// [`Storage`] on a real directory.
#[derive(Debug)]
pub struct DirStorage {
    dir: PathBuf,
    /// The file appends go to, kept open.
    open: Option<(String, File)>,
    /// Files created since the directory was last synced.
    created: HashSet<String>,
}

impl DirStorage {
    /// Storage in `dir`, which must exist.
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into(), open: None, created: HashSet::new() }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    fn sync_dir(&self) -> io::Result<()> {
        File::open(&self.dir)?.sync_all()
    }

    fn file(&mut self, name: &str) -> io::Result<&mut File> {
        if self.open.as_ref().is_none_or(|(open, _)| open != name) {
            let path = self.path(name);
            if !path.exists() {
                self.created.insert(name.to_owned());
            }
            let file = OpenOptions::new().create(true).append(true).open(path)?;
            self.open = Some((name.to_owned(), file));
        }
        match &mut self.open {
            Some((_, file)) => Ok(file),
            None => Err(io::Error::other("no open file")),
        }
    }
}

impl Storage for DirStorage {
    fn list(&self) -> io::Result<Vec<String>> {
        let mut names = Vec::new();
        for entry in std::fs::read_dir(&self.dir)? {
            if let Some(name) = entry?.file_name().to_str() {
                names.push(name.to_owned());
            }
        }
        Ok(names)
    }

    fn read(&self, name: &str) -> io::Result<Vec<u8>> {
        std::fs::read(self.path(name))
    }

    fn append(&mut self, name: &str, data: &[u8]) -> io::Result<()> {
        self.file(name)?.write_all(data)
    }

    fn sync(&mut self, name: &str) -> io::Result<()> {
        self.file(name)?.sync_data()?;
        if self.created.remove(name) {
            self.sync_dir()?;
        }
        Ok(())
    }

    fn truncate(&mut self, name: &str, len: u64) -> io::Result<()> {
        let file = self.file(name)?;
        file.set_len(len)?;
        file.sync_data()
    }

    fn replace(&mut self, name: &str, data: &[u8]) -> io::Result<()> {
        let temporary = self.path(&format!("{name}.tmp"));
        {
            let mut file = File::create(&temporary)?;
            file.write_all(data)?;
            file.sync_all()?;
        }
        std::fs::rename(&temporary, self.path(name))?;
        self.sync_dir()
    }

    fn remove(&mut self, name: &str) -> io::Result<()> {
        if self.open.as_ref().is_some_and(|(open, _)| open == name) {
            self.open = None;
        }
        self.created.remove(name);
        std::fs::remove_file(self.path(name))
    }
}

/// Holds the log directory for one process: an exclusive `flock` on
/// `<dir>/lock`, released when the process exits (however it exits).
#[derive(Debug)]
pub(crate) struct DirLock {
    _file: File,
}

impl DirLock {
    /// Locks `dir`, or says who holds it.
    pub(crate) fn acquire(dir: &Path) -> Result<Self, String> {
        let path = dir.join("lock");
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(|err| format!("cannot open {}: {err}", path.display()))?;
        match file.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                let holder = std::fs::read_to_string(&path).unwrap_or_default();
                let holder = holder.trim();
                let by = if holder.is_empty() { String::from("another process") } else { format!("pid {holder}") };
                return Err(format!("the local log {} is in use by {by}", dir.display()));
            }
            Err(std::fs::TryLockError::Error(err)) => {
                return Err(format!("cannot lock {}: {err}", path.display()));
            }
        }
        // The holder's pid, for the message a second process prints.
        file.set_len(0).and_then(|()| write!(file, "{}", std::process::id())).and_then(|()| file.flush()).ok();
        Ok(Self { _file: file })
    }
}
