//! Free space on the state directory's filesystem, for `/health`, `llmgw status` and
//! `llmgw doctor`.
//!
//! The figures are `statvfs`'s: `available` is what an unprivileged user may still write
//! (`f_bavail`), `total` the filesystem's size. Quotas are not read: each shared
//! filesystem has its own tool for them (`lfs quota`, `mmlsquota`, `quota` over rpc) and
//! none is cheap; where a filesystem applies the quota to `statvfs` itself (XFS project
//! quotas, many NFS appliances, a tmpfs's size) the quota is what these figures show.

use std::path::Path;

/// Below this much room (or [`LOW_FRACTION`] of the filesystem) the state directory is
/// short of space.
pub const LOW_BYTES: u64 = 1 << 30;
/// The fraction of the filesystem under which it is short of space.
pub const LOW_FRACTION: f64 = 0.10;

/// One filesystem's room.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Space {
    /// Bytes an unprivileged user may still write.
    pub available: u64,
    /// The filesystem's size in bytes.
    pub total: u64,
}

impl Space {
    /// Reads the filesystem holding `path` (which must exist).
    // The statvfs fields are u32 on some targets, u64 on others.
    #[allow(clippy::useless_conversion)]
    pub fn of(path: &Path) -> std::io::Result<Space> {
        let st = nix::sys::statvfs::statvfs(path).map_err(std::io::Error::from)?;
        let unit = u64::from(st.fragment_size()).max(1);
        Ok(Space {
            available: u64::from(st.blocks_available()).saturating_mul(unit),
            total: u64::from(st.blocks()).saturating_mul(unit),
        })
    }

    /// Free fraction of the whole (1.0 for a filesystem that reports no size).
    pub fn free_fraction(&self) -> f64 {
        if self.total == 0 {
            1.0
        } else {
            self.available as f64 / self.total as f64
        }
    }

    /// Short of space: under [`LOW_BYTES`] or under [`LOW_FRACTION`] free.
    pub fn is_low(&self) -> bool {
        self.available < LOW_BYTES || self.free_fraction() < LOW_FRACTION
    }

    /// `3.1 GB free of 50 GB (6 %)`.
    pub fn describe(&self) -> String {
        format!(
            "{} free of {} ({:.0} %)",
            bytes(self.available),
            bytes(self.total),
            self.free_fraction() * 100.0
        )
    }
}

/// Bytes for people: `835 MB`, `1.4 GB`, `12 kB` (powers of 1000, as `df -H`).
pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 6] = ["B", "kB", "MB", "GB", "TB", "PB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1000.0 && u + 1 < UNITS.len() {
        v /= 1000.0;
        u += 1;
    }
    if u == 0 || v >= 100.0 {
        format!("{v:.0} {}", UNITS[u])
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn low_by_bytes_or_fraction() {
        let gb = 1_000_000_000;
        assert!(!Space {
            available: 50 * gb,
            total: 100 * gb
        }
        .is_low());
        assert!(Space {
            available: 5 * gb,
            total: 100 * gb
        }
        .is_low());
        assert!(Space {
            available: 500_000_000,
            total: 2 * gb
        }
        .is_low());
        assert!(Space {
            available: 3 << 20,
            total: 3 << 20
        }
        .is_low());
        assert_eq!(bytes(835_000_000), "835 MB");
        assert_eq!(bytes(1_400_000_000), "1.4 GB");
        assert_eq!(bytes(12), "12 B");
    }

    #[test]
    fn reads_a_real_filesystem() {
        let s = Space::of(Path::new("/")).unwrap();
        assert!(s.total > 0 && s.available <= s.total, "{s:?}");
    }
}
