//! This machine's name, as other nodes and ssh address it.

/// The node's short host name (`localhost` when it cannot be read).
pub fn node_hostname() -> String {
    nix::unistd::gethostname()
        .ok()
        .and_then(|h| h.into_string().ok())
        .unwrap_or_else(|| "localhost".into())
}
