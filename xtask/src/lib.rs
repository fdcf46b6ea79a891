//! Library half of `cargo xtask`, so the checks can also run as tests.

pub mod alerts;
pub mod bench;
pub mod chaos;
pub mod ci;
pub mod cmd;
pub mod console;
pub mod deploy;
pub mod docs;
pub mod publish;
pub mod reuse;
pub mod schemathesis;
pub mod servers;
pub mod services;
pub mod tidy;
pub mod tools;

use std::path::{Path, PathBuf};

/// The workspace root (the parent of this crate's directory).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().map_or_else(|| PathBuf::from("."), Path::to_path_buf)
}
