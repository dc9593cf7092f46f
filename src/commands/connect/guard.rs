//! What keeps another user of a shared login node out of `connect`: its ssh control
//! directory is private (a fresh random name, created without `-p` so an existing one is
//! never adopted, 0700, ours, not a symlink; under `$XDG_RUNTIME_DIR` when that is a
//! private directory of ours), and it does not start on a port another user's process
//! already listens on (any address of it: a client of `localhost:PORT` may reach `::1`).

use std::os::unix::fs::{DirBuilderExt, MetadataExt};
use std::path::{Path, PathBuf};

/// Names tried before giving up (each is 64 random bits: a clash means someone is busy).
const TRIES: usize = 16;

/// A private directory `connect` created itself; removed when dropped.
pub struct PrivateDir(PathBuf);

impl PrivateDir {
    /// Creates `llmgw-connect-<random>` under `$XDG_RUNTIME_DIR` (when it is a directory
    /// of ours that nobody else may write) or the temp directory.
    pub fn create() -> std::io::Result<PrivateDir> {
        PrivateDir::create_in(&base_dir(), "llmgw-connect-", random_u64)
    }

    /// Creates `<prefix><16 hex digits of name()>` in `base`: never an existing directory
    /// (someone else's could hold their socket), then checked to be what was created.
    pub fn create_in(
        base: &Path,
        prefix: &str,
        mut name: impl FnMut() -> u64,
    ) -> std::io::Result<PrivateDir> {
        for _ in 0..TRIES {
            let p = base.join(format!("{prefix}{:016x}", name()));
            match std::fs::DirBuilder::new().mode(0o700).create(&p) {
                Ok(()) => {
                    check_private(&p)?;
                    return Ok(PrivateDir(p));
                }
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(e),
            }
        }
        Err(std::io::Error::other(format!(
            "{TRIES} names under {} were taken already; refusing to use a directory this process did not create",
            base.display()
        )))
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for PrivateDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// 64 bits from the kernel (the clock and pid if it cannot give them: the name need not
/// be secret, only not taken).
fn random_u64() -> u64 {
    use std::io::Read as _;
    let mut b = [0u8; 8];
    match std::fs::File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut b)) {
        Ok(()) => u64::from_ne_bytes(b),
        Err(_) => {
            let t = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos() as u64);
            t ^ u64::from(std::process::id()).rotate_left(32)
        }
    }
}

/// A directory only we can use: not a symlink, owned by us, no access for group or others.
pub fn check_private(p: &Path) -> std::io::Result<()> {
    let m = std::fs::symlink_metadata(p)?;
    let uid = nix::unistd::getuid().as_raw();
    let why = if m.file_type().is_symlink() {
        Some("it is a symbolic link".to_string())
    } else if !m.is_dir() {
        Some("it is not a directory".to_string())
    } else if m.uid() != uid {
        Some(format!(
            "it belongs to uid {}, not to you (uid {uid})",
            m.uid()
        ))
    } else if m.mode() & 0o077 != 0 {
        Some(format!("its mode is {:o}, not 700", m.mode() & 0o777))
    } else {
        None
    };
    match why {
        Some(why) => Err(std::io::Error::new(
            std::io::ErrorKind::PermissionDenied,
            format!("refusing {} as ssh's control directory: {why}", p.display()),
        )),
        None => Ok(()),
    }
}

/// `$XDG_RUNTIME_DIR` when it is set and private to us, else the temp directory.
fn base_dir() -> PathBuf {
    std::env::var_os("XDG_RUNTIME_DIR")
        .map(PathBuf::from)
        .filter(|d| d.is_absolute() && check_private(d).is_ok())
        .unwrap_or_else(std::env::temp_dir)
}

/// A process of another user listening on a port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Holder {
    pub uid: u32,
    /// The address it listens on, as `/proc/net/tcp*` has it (`127.0.0.1`, `::1`, …).
    pub addr: String,
}

/// Sockets of users other than us listening on TCP `port` (any address, IPv4 or IPv6), from
/// `/proc/net/tcp` and `/proc/net/tcp6` (empty where they cannot be read).
pub fn other_users_listening(port: u16) -> Vec<Holder> {
    let me = nix::unistd::getuid().as_raw();
    ["/proc/net/tcp", "/proc/net/tcp6"]
        .iter()
        .filter_map(|f| std::fs::read_to_string(f).ok())
        .flat_map(|text| listeners(&text, port))
        .filter(|h| h.uid != me)
        .collect()
}

/// Listening sockets on `port` in one `/proc/net/tcp*` table.
fn listeners(table: &str, port: u16) -> Vec<Holder> {
    table
        .lines()
        .skip(1)
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            // sl local rem st tx:rx tr:when retrnsmt uid …
            let (local, st, uid) = (f.get(1)?, f.get(3)?, f.get(7)?);
            if *st != "0A" {
                return None;
            }
            let (addr, p) = local.split_once(':')?;
            if u16::from_str_radix(p, 16).ok()? != port {
                return None;
            }
            Some(Holder {
                uid: uid.parse().ok()?,
                addr: proc_addr(addr),
            })
        })
        .collect()
}

/// `/proc/net/tcp*`'s hex address (32-bit words in host order) as text.
fn proc_addr(hex: &str) -> String {
    let words: Vec<u32> = (0..hex.len() / 8)
        .filter_map(|i| u32::from_str_radix(hex.get(i * 8..i * 8 + 8)?, 16).ok())
        .collect();
    let bytes: Vec<u8> = words.iter().flat_map(|w| w.to_ne_bytes()).collect();
    match bytes.len() {
        4 => std::net::Ipv4Addr::new(bytes[0], bytes[1], bytes[2], bytes[3]).to_string(),
        16 => {
            let mut b = [0u8; 16];
            b.copy_from_slice(&bytes);
            std::net::Ipv6Addr::from(b).to_string()
        }
        _ => hex.to_string(),
    }
}

/// The user name of `uid`, or the number.
pub fn user_of(uid: u32) -> String {
    nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid))
        .ok()
        .flatten()
        .map_or_else(
            || format!("uid {uid}"),
            |u| format!("{} (uid {uid})", u.name),
        )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listening_sockets_are_read_from_proc_tables() {
        let v4 = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n   \
                  0: 0100007F:0FA0 00000000:0000 0A 00000000:00000000 00:00000000 00000000 65534        0 1 1\n   \
                  1: 00000000:0FA0 0100007F:1234 01 00000000:00000000 00:00000000 00000000     0        0 2 1\n";
        let h = listeners(v4, 4000);
        let addr = if cfg!(target_endian = "little") {
            "127.0.0.1"
        } else {
            "1.0.0.127"
        };
        assert_eq!(
            h,
            vec![Holder {
                uid: 65534,
                addr: addr.into()
            }]
        );
        assert!(listeners(v4, 4001).is_empty());
        let v6 = "  sl  local_address                         remote_address                        st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n   \
                  0: 00000000000000000000000001000000:0FA0 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000  1000        0 3 1\n";
        let h = listeners(v6, 4000);
        assert_eq!(h.len(), 1);
        assert_eq!(h[0].uid, 1000);
        if cfg!(target_endian = "little") {
            assert_eq!(h[0].addr, "::1");
        }
    }

    #[test]
    fn the_control_directory_is_fresh_and_private() {
        let base = tempfile::tempdir().unwrap();
        let mut names = [7u64, 7, 8].into_iter();
        let first = PrivateDir::create_in(base.path(), "c-", || names.next().unwrap()).unwrap();
        assert!(first.path().ends_with("c-0000000000000007"));
        // The same name again: never adopted, the next one is taken.
        let second = PrivateDir::create_in(base.path(), "c-", || names.next().unwrap()).unwrap();
        assert!(second.path().ends_with("c-0000000000000008"));
        let mode = std::fs::metadata(second.path()).unwrap().mode();
        assert_eq!(mode & 0o777, 0o700);
        // Every name taken: refused, not reused.
        let err = PrivateDir::create_in(base.path(), "c-", || 7)
            .err()
            .unwrap();
        assert!(err.to_string().contains("refusing"), "{err}");
        // Someone else's directory, or a link to ours, is refused.
        let link = base.path().join("link");
        std::os::unix::fs::symlink(first.path(), &link).unwrap();
        assert!(check_private(&link).is_err());
        let open = base.path().join("open");
        std::fs::DirBuilder::new()
            .mode(0o755)
            .create(&open)
            .unwrap();
        std::fs::set_permissions(&open, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .unwrap();
        assert!(check_private(&open)
            .unwrap_err()
            .to_string()
            .contains("not 700"));
        if nix::unistd::getuid().is_root() {
            let theirs = base.path().join("theirs");
            std::fs::DirBuilder::new()
                .mode(0o700)
                .create(&theirs)
                .unwrap();
            std::os::unix::fs::chown(&theirs, Some(65534), Some(65534)).unwrap();
            let err = check_private(&theirs).unwrap_err().to_string();
            assert!(err.contains("belongs to uid 65534"), "{err}");
        }
        let path = first.path().to_path_buf();
        drop(first);
        assert!(!path.exists());
    }
}
