//! The footprint table in `docs/reuse.md`.

use std::path::Path;

use anyhow::{Context as _, Result, bail};

use super::*;

/// One line of the footprint table.
#[derive(Debug, Clone)]
pub(super) struct Row {
    pub(super) example: Example,
    pub(super) set: String,
    pub(super) crates: usize,
    pub(super) budget: usize,
    /// Clean release build seconds and binary bytes; `None` when the
    /// example cannot build with this set (it needs more).
    pub(super) built: Option<(f64, u64)>,
}

pub(super) const TABLE_START: &str = "<!-- footprint table: written by `cargo xtask reuse --report` -->";
pub(super) const TABLE_END: &str = "<!-- end of footprint table -->";

pub(super) fn write_report(root: &Path, rows: &[Row]) -> Result<()> {
    let mut table = String::from(
        "| crate (example) | features | crates in tree | budget | clean release build | example binary |\n|---|---|---:|---:|---:|---:|\n",
    );
    for row in rows {
        let (build, binary) = match row.built {
            Some((seconds, bytes)) => {
                (format!("{seconds:.0} s"), format!("{:.1} MiB", bytes as f64 / (1024.0 * 1024.0)))
            }
            None => ("—".to_owned(), "— (the example needs more features)".to_owned()),
        };
        table.push_str(&format!(
            "| {} (`{}`) | {} | {} | {} | {build} | {binary} |\n",
            row.example.krate, row.example.name, row.set, row.crates, row.budget
        ));
    }
    let path = root.join("docs/reuse.md");
    let doc = std::fs::read_to_string(&path).with_context(|| format!("cannot read {}", path.display()))?;
    let (Some(start), Some(end)) = (doc.find(TABLE_START), doc.find(TABLE_END)) else {
        bail!("{} lacks the footprint table markers", path.display());
    };
    let updated = format!("{}{TABLE_START}\n{table}{}", &doc[..start], &doc[end..]);
    std::fs::write(&path, updated)?;
    eprintln!("reuse: footprint table written to {}", path.display());
    Ok(())
}
