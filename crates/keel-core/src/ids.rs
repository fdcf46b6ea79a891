/// The default instance identifier: `<hostname>-<pid>`.
///
/// Unique among live processes on a cluster as long as host names are, which
/// is what Kubernetes and most orchestrators guarantee.
pub fn default_instance_id() -> String {
    let host = gethostname::gethostname();
    let host = host.to_string_lossy();
    let host = if host.is_empty() { "localhost" } else { &host };
    format!("{host}-{}", std::process::id())
}

#[cfg(test)]
mod tests {
    #[test]
    fn instance_id_ends_with_pid() {
        let id = super::default_instance_id();
        assert!(id.ends_with(&format!("-{}", std::process::id())), "{id}");
        assert!(id.len() > 2);
    }
}
