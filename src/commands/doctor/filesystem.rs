//! Where things live: the state directory and the binary on a filesystem the compute
//! nodes see (by statfs type), or on this machine when every node is this machine.

use super::*;

// --- where things live -------------------------------------------------------------

pub(crate) fn state_dir_check(name: &str, dir: &Path, here: Option<&str>) -> Check {
    let c = check("state-dir", "state directory");
    let fix = format!(
        "keep it on the shared filesystem: the default ~/.llmgw/{name}, or --state-dir / LLMGW_STATE_DIR under your home or project space"
    );
    let existing = existing_ancestor(dir);
    let writable = nix::unistd::access(
        existing,
        nix::unistd::AccessFlags::W_OK | nix::unistd::AccessFlags::X_OK,
    )
    .is_ok();
    if !writable {
        return c.fail(
            format!(
                "{} cannot be created: {} is not writable by you",
                tilde(dir),
                tilde(existing)
            ),
            fix,
        );
    }
    shared_check(c, dir, here, &fix)
}

/// Room on the state directory's filesystem: ⚠ under 1 GB or 10 % free
/// ([`llmgw_core::disk`]; statvfs figures, quotas are not read). Bounded: a hung network
/// filesystem gets a few seconds.
pub(crate) async fn space_check(dir: &Path, config: Option<&Config>) -> Check {
    let c = check("state-space", "state directory's free space");
    let fix = "lower [store] retention (e.g. \"30d\": older spend rows are pruned, their hourly totals stay), or move the state directory to a filesystem with room (--state-dir or LLMGW_STATE_DIR)";
    let at = existing_ancestor(dir).to_path_buf();
    let shown = tilde(&at);
    let read = tokio::task::spawn_blocking(move || llmgw_core::disk::Space::of(&at));
    let space = match tokio::time::timeout(Duration::from_secs(5), read).await {
        Ok(Ok(Ok(s))) => s,
        Ok(Ok(Err(e))) => {
            return c.warn(format!("cannot read the free space of {shown}: {e}"), fix)
        }
        _ => {
            return c.warn(
                format!(
                    "statvfs of {shown} did not answer within 5 s (a hung network filesystem?)"
                ),
                fix,
            )
        }
    };
    let db = std::fs::metadata(dir.join("llmgw.db"))
        .map(|m| format!("; llmgw.db is {}", llmgw_core::disk::bytes(m.len())))
        .unwrap_or_default();
    let keep = match config.map(|c| c.store.retention.0) {
        Some(None) => "; spend rows kept forever".to_string(),
        Some(Some(d)) => format!(
            "; spend rows kept {}",
            crate::commands::status_store::human_secs(d.as_secs_f64())
        ),
        None => String::new(),
    };
    let detail = format!("{} on {shown}{db}{keep}", space.describe());
    if space.is_low() {
        c.warn(
            format!("nearly full (under 1 GB or 10 % free): {detail}"),
            fix,
        )
    } else {
        c.ok(detail)
    }
}

/// The binary the job runs: `[slurm] binary`, else this one (as `start` decides), and its
/// path when it is a runnable file. `scratch_here`: every node runs on this machine and
/// jobs see its /tmp (see the module docs).
pub(crate) fn binary_check(
    config: Option<&Config>,
    here: Option<&str>,
    scratch_here: Option<&str>,
) -> (Check, Option<PathBuf>) {
    let c = check("binary", "llmgw binary");
    let fix = "copy llmgw to a directory the compute nodes see (e.g. ~/bin) and run it from there, or set [slurm] binary to it";
    let path = match config.and_then(|c| c.slurm.binary.as_ref()) {
        Some(b) => std::path::absolute(b).unwrap_or_else(|_| b.clone()),
        None => match std::env::current_exe() {
            Ok(p) => p,
            Err(e) => {
                return (
                    c.fail(format!("cannot tell where this binary is: {e}"), fix),
                    None,
                )
            }
        },
    };
    if !is_executable(&path) {
        return (
            c.fail(format!("{} is not an executable file", tilde(&path)), fix),
            None,
        );
    }
    let check = match (place(&path), scratch_here) {
        (Ok(Place::Scratch(dir)), Some(nodes)) => c.ok(format!(
            "{} (under {dir}, node-local scratch; fine: every node of the cluster ({nodes}) runs on this machine and SLURM gives jobs no private {dir})",
            tilde(&path)
        )),
        _ => shared_check(c, &path, here, fix),
    };
    (check, Some(path))
}

/// The compute nodes' CPU architecture against the binary's: an x86_64 login node in
/// front of Grace Hopper (aarch64) nodes needs the aarch64 build. Nothing to say when the
/// binary is not an ELF file llmgw knows or SLURM does not report the nodes' `Arch`.
pub(crate) async fn arch_check(binary: &Path, partition: Option<&str>) -> Option<Check> {
    let ours = elf_arch(binary)?;
    let out = bounded("scontrol", &["show", "node", "-o"], SLURM_TIMEOUT)
        .await
        .ok()
        .filter(|o| o.status.success())?;
    let text = String::from_utf8_lossy(&out.stdout);
    let wanted: Option<Vec<&str>> = partition.map(|p| p.split(',').map(str::trim).collect());
    // arch -> nodes
    let mut archs: std::collections::BTreeMap<&str, Vec<&str>> = Default::default();
    for line in text.lines() {
        let field = |key: &str| line.split_whitespace().find_map(|f| f.strip_prefix(key));
        let (Some(node), Some(arch)) = (field("NodeName="), field("Arch=")) else {
            continue;
        };
        let in_partition = wanted.as_ref().is_none_or(|w| {
            field("Partitions=").is_some_and(|ps| ps.split(',').any(|p| w.contains(&p)))
        });
        if in_partition && arch != "(null)" {
            archs.entry(arch).or_default().push(node);
        }
    }
    if archs.is_empty() {
        return None;
    }
    let c = check("node-arch", "compute nodes' architecture");
    let scope = partition.map_or_else(String::new, |p| format!(" in partition {p}"));
    let count: usize = archs.values().map(Vec::len).sum();
    let others: Vec<String> = archs
        .iter()
        .filter(|(a, _)| **a != ours)
        .map(|(a, nodes)| format!("{a} ({})", nodes.join(", ")))
        .collect();
    let build = "build llmgw for that architecture (README: Other architectures) and set [slurm] binary to it";
    Some(if others.is_empty() {
        let nodes = if count == 1 { "node" } else { "nodes" };
        c.ok(format!("{ours}, like the binary ({count} {nodes}{scope})"))
    } else if !archs.contains_key(ours) {
        c.fail(
            format!(
                "the nodes{scope} are {}; the binary is {ours}",
                others.join(", ")
            ),
            build,
        )
    } else {
        c.warn(
            format!(
                "some nodes{scope} are {}; the binary is {ours}",
                others.join(", ")
            ),
            format!(
                "keep the job on {ours} nodes with [slurm] partition or constraint, or {build}"
            ),
        )
    })
}

/// The CPU architecture of an ELF executable, named as SLURM's `Arch` and `uname -m`.
pub(crate) fn elf_arch(path: &Path) -> Option<&'static str> {
    use std::io::Read as _;
    let mut head = [0u8; 20];
    std::fs::File::open(path).ok()?.read_exact(&mut head).ok()?;
    if &head[..4] != b"\x7fELF" || head[5] != 1 {
        return None; // not ELF, or big-endian
    }
    match u16::from_le_bytes([head[18], head[19]]) {
        0x3e => Some("x86_64"),
        0xb7 => Some("aarch64"),
        0x15 => Some("ppc64le"),
        _ => None,
    }
}

/// Where a path lives, as far as the compute nodes are concerned.
pub(crate) enum Place {
    /// Under one of [`SCRATCH`].
    Scratch(&'static str),
    /// On a network filesystem.
    Shared(String),
    /// On a node-local filesystem.
    Local(String),
}

/// The path, or its closest parent that exists (a state directory may not exist yet).
pub(crate) fn existing_ancestor(path: &Path) -> &Path {
    path.ancestors()
        .find(|p| p.exists())
        .unwrap_or(Path::new("/"))
}

pub(crate) fn place(path: &Path) -> std::io::Result<Place> {
    let real = std::fs::canonicalize(existing_ancestor(path))?;
    for dir in SCRATCH {
        if real.starts_with(dir) || path.starts_with(dir) {
            return Ok(Place::Scratch(dir));
        }
    }
    let st = nix::sys::statfs::statfs(&real).map_err(std::io::Error::from)?;
    // `f_type` is a signed word; the magic numbers are 32-bit.
    let magic = (st.filesystem_type().0 as u64) & 0xffff_ffff;
    Ok(match FILESYSTEMS.iter().find(|(m, _, _)| *m == magic) {
        Some((_, name, true)) => Place::Shared((*name).to_string()),
        Some((_, name, false)) => Place::Local((*name).to_string()),
        None => Place::Local(format!("a filesystem of type {magic:#x}")),
    })
}

/// statfs magic numbers (linux/magic.h and the vendors'): name, network filesystem?
pub(crate) const FILESYSTEMS: &[(u64, &str, bool)] = &[
    (0x6969, "nfs", true),
    (0x0bd0_0bd0, "lustre", true),
    (0x4750_4653, "gpfs", true),
    (0x1983_0326, "beegfs", true),
    (0x00c3_6400, "cephfs", true),
    (0xff53_4d42, "cifs", true),
    (0xfe53_4d42, "smb2", true),
    (0x517b, "smb", true),
    (0x5346_414f, "afs", true),
    (0x6b41_4653, "afs", true),
    (0xaad7_aaea, "panfs", true),
    (0x2003_0528, "orangefs", true),
    (0xef53, "ext4", false),
    (0x5846_5342, "xfs", false),
    (0x9123_683e, "btrfs", false),
    (0x2fc1_2fc1, "zfs", false),
    (0x0102_1994, "tmpfs", false),
    (0x8584_58f6, "ramfs", false),
    (0x794c_7630, "overlay", false),
    (0x6573_5546, "fuse", false),
    (0x7371_7368, "squashfs", false),
    (0x0102_1997, "9p", false),
];

/// The shared-filesystem rule (see the module doc) applied to `path`.
pub(crate) fn shared_check(c: Named, path: &Path, here: Option<&str>, fix: &str) -> Check {
    let shown = tilde(path);
    match place(path) {
        Err(e) => c.warn(format!("cannot tell where {shown} lives: {e}"), fix),
        Ok(Place::Scratch(dir)) => c.fail(
            format!("{shown} is under {dir}: node-local scratch, which the job may not see (SLURM can give each job its own {dir})"),
            fix,
        ),
        Ok(Place::Shared(fs)) => c.ok(format!("{shown} (on {fs}, a network filesystem)")),
        Ok(Place::Local(fs)) => match here {
            Some(node) => c.ok(format!(
                "{shown} (on {fs}, node-local; fine: every node of the cluster ({node}) runs on this machine)"
            )),
            None => c.warn(
                format!("{shown} is on {fs}, node-local: compute nodes may not see it"),
                fix,
            ),
        },
    }
}
