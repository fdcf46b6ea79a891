//! Records the git commit and build date for `/status`, and (feature
//! `console`) embeds the operator console: each asset under `console/` is
//! named by a hash of its content and compressed with gzip and brotli once,
//! here, so the binary serves it without work per request.

use std::process::Command;

fn main() {
    let hash = Command::new("git")
        .args(["rev-parse", "--short=12", "HEAD"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "unknown".into());
    // Reproducible builds set SOURCE_DATE_EPOCH; otherwise the build time.
    let date = std::env::var("SOURCE_DATE_EPOCH")
        .ok()
        .and_then(|s| s.parse::<u64>().ok())
        .map(|secs| std::time::UNIX_EPOCH + std::time::Duration::from_secs(secs))
        .unwrap_or_else(std::time::SystemTime::now);
    println!("cargo:rustc-env=KEEL_GIT_HASH={hash}");
    println!("cargo:rustc-env=KEEL_BUILD_DATE={}", humantime::format_rfc3339_seconds(date));
    println!("cargo:rerun-if-changed=../../.git/HEAD");
    println!("cargo:rerun-if-changed=../../.git/refs/heads");
    println!("cargo:rerun-if-env-changed=SOURCE_DATE_EPOCH");
    #[cfg(feature = "console")]
    console::embed();
}

#[cfg(feature = "console")]
mod console {
    use std::fmt::Write as _;
    use std::io::Write as _;
    use std::path::{Path, PathBuf};

    /// The page, then the assets it names as `{{file}}`.
    const PAGE: &str = "index.html";
    const ASSETS: &[(&str, &str)] = &[
        ("app.js", "text/javascript; charset=utf-8"),
        ("app.css", "text/css; charset=utf-8"),
        ("favicon.svg", "image/svg+xml"),
    ];

    pub(super) fn embed() {
        let source =
            PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR")).join("console");
        let out = PathBuf::from(std::env::var("OUT_DIR").expect("cargo sets OUT_DIR"));
        println!("cargo:rerun-if-changed={}", source.display());
        let mut table = String::from(
            "/// The console's files, compressed at build time.\npub(crate) static ASSETS: &[Asset] = &[\n",
        );
        let mut page = read(&source.join(PAGE));
        for (file, content_type) in ASSETS {
            let bytes = std::fs::read(source.join(file)).unwrap_or_else(|err| panic!("console/{file}: {err}"));
            let tag = fnv64(&bytes);
            let (stem, ext) = file.rsplit_once('.').expect("asset names have an extension");
            let url = format!("/assets/{stem}.{tag:016x}.{ext}");
            page = page.replace(&format!("{{{{{file}}}}}"), &url);
            entry(&mut table, &out, &url, content_type, true, tag, &bytes);
        }
        assert!(!page.contains("{{"), "console/{PAGE} names an asset that is not embedded");
        entry(&mut table, &out, "/", "text/html; charset=utf-8", false, fnv64(page.as_bytes()), page.as_bytes());
        table.push_str("];\n");
        std::fs::write(out.join("console_assets.rs"), table).expect("write console_assets.rs");
    }

    fn read(path: &Path) -> String {
        std::fs::read_to_string(path).unwrap_or_else(|err| panic!("{}: {err}", path.display()))
    }

    fn entry(table: &mut String, out: &Path, url: &str, content_type: &str, immutable: bool, tag: u64, bytes: &[u8]) {
        let name = format!("{tag:016x}");
        let write = |suffix: &str, data: &[u8]| {
            let path = out.join(format!("console-{name}{suffix}"));
            std::fs::write(&path, data).expect("write a console asset");
            path.display().to_string()
        };
        let identity = write("", bytes);
        let mut gzip = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
        gzip.write_all(bytes).expect("gzip in memory");
        let gzip = write(".gz", &gzip.finish().expect("gzip in memory"));
        let mut br = Vec::new();
        {
            let mut writer = brotli::CompressorWriter::new(&mut br, 4096, 11, 22);
            writer.write_all(bytes).expect("brotli in memory");
        }
        let br = write(".br", &br);
        let _ = writeln!(
            table,
            "    Asset {{ path: {url:?}, content_type: {content_type:?}, etag: \"\\\"{name}\\\"\", immutable: {immutable}, \
             identity: include_bytes!({identity:?}), gzip: include_bytes!({gzip:?}), br: include_bytes!({br:?}) }},"
        );
    }

    /// FNV-1a, 64 bits: a cache key for the file's content, not a security
    /// measure.
    fn fnv64(bytes: &[u8]) -> u64 {
        bytes.iter().fold(0xcbf2_9ce4_8422_2325, |hash, byte| (hash ^ u64::from(*byte)).wrapping_mul(0x0100_0000_01b3))
    }
}
