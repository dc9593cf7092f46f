//! `llmgw connect` on a shared login node (issue 21, finding 4): another user must not be
//! able to take its connections. Its ssh control directory is one it created itself
//! (private, random name, under `$XDG_RUNTIME_DIR` when set), never one someone else made
//! first; and it does not start on a port another user's process listens on — on any
//! address of it, since a client of `localhost:PORT` may reach `::1` first.
//!
//! These run as root (to act as another user, `nobody`) and skip otherwise.

// Test and benchmark code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod common;

use common::chain::Sshd;
use std::io::BufRead as _;
use std::os::unix::fs::MetadataExt as _;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

const NOBODY: u32 = 65534;

fn is_root() -> bool {
    nix::unistd::getuid().is_root()
}

/// A process of `nobody` listening on `addr:port`; killed when dropped.
struct Squatter(Child);

impl Squatter {
    fn listen(addr: &str, port: u16) -> Squatter {
        let family = if addr.contains(':') {
            "AF_INET6"
        } else {
            "AF_INET"
        };
        let script = format!(
            "import socket, sys, time\n\
             s = socket.socket(socket.{family})\n\
             s.bind(('{addr}', {port}))\n\
             s.listen()\n\
             print('ready', flush=True)\n\
             time.sleep(120)\n"
        );
        let mut child = Command::new("python3")
            .args(["-c", &script])
            .uid(NOBODY)
            .gid(NOBODY)
            .stdout(Stdio::piped())
            .spawn()
            .expect("python3 as nobody");
        let mut line = String::new();
        std::io::BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert_eq!(
            line.trim(),
            "ready",
            "nobody could not listen on {addr}:{port}"
        );
        Squatter(child)
    }
}

impl Drop for Squatter {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A port free on both 127.0.0.1 and ::1 right now.
fn free_port() -> u16 {
    loop {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        if std::net::TcpListener::bind(("::1", port)).is_ok() {
            return port;
        }
    }
}

#[test]
fn connect_refuses_a_port_another_user_listens_on() {
    if !is_root() {
        common::say_skipped("needs root to listen as another user");
        return;
    }
    let state = tempfile::tempdir().unwrap();
    // ::1 is the case that used to start: connect bound 127.0.0.1 and the other user's
    // process got every client that reached localhost over IPv6.
    for addr in ["::1", "127.0.0.1"] {
        let port = free_port();
        let _squatter = Squatter::listen(addr, port);
        let mut c = common::llmgw_command();
        c.args(["connect", "--name", "x", "--state-dir"])
            .arg(state.path())
            .args(["--port", &port.to_string()]);
        let out = common::run_bounded(c, Duration::from_secs(20));
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success(),
            "connect started next to {addr}:{port}"
        );
        assert!(
            err.contains(&format!(
                "port {port} is already held by another user's process (nobody (uid {NOBODY}), listening on {addr})"
            )),
            "{err}"
        );
    }
}

/// A child process killed when dropped (also when an assertion fails first).
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `llmgw connect --login` over the test sshd, started by a shell that first plants
/// `planted` (if any; `$$` is the pid connect will have, as the shell execs it) owned by
/// `nobody`; returns once connect printed its address (its ssh master is up).
fn connect_over_ssh(sshd: &Sshd, env: &[(&str, &Path)], plant: bool) -> (Running, u32) {
    let known = format!("UserKnownHostsFile={}", sshd.known_hosts.display());
    let script = if plant {
        format!(
            "d=\"$TMPDIR/llmgw-connect-0-$$\"; mkdir -m 0777 \"$d\" && chown {NOBODY}:{NOBODY} \"$d\" && chmod 0777 \"$d\" && exec \"$0\" \"$@\""
        )
    } else {
        "exec \"$0\" \"$@\"".to_string()
    };
    let mut c = Command::new("sh");
    c.args(["-c", &script, common::BIN])
        .args([
            "connect",
            "--name",
            "x",
            "--state-dir",
            "/nonexistent/llmgw",
        ])
        .args(["--port", "0", "--login", "root@127.0.0.1"])
        .args(["--ssh-port", &sshd.port.to_string(), "-i"])
        .arg(&sshd.key)
        .args(["-o", "StrictHostKeyChecking=accept-new", "-o", &known])
        .env_remove("XDG_RUNTIME_DIR")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in env {
        c.env(k, v);
    }
    let mut child = c.spawn().expect("spawn connect");
    let pid = child.id();
    let out = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut lines = std::io::BufReader::new(out).lines();
        let _ = tx.send(lines.next().and_then(Result::ok));
        for _ in lines {}
    });
    let first = rx.recv_timeout(Duration::from_secs(40)).ok().flatten();
    if first
        .as_deref()
        .is_none_or(|l| !l.contains("llmgw connect: http://"))
    {
        let _ = child.kill();
        let mut err = String::new();
        let _ = std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err);
        panic!("connect did not start: {first:?}\n{err}");
    }
    (Running(child), pid)
}

fn control_dirs(base: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(base)
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("llmgw-connect-"))
        })
        .collect();
    v.sort();
    v
}

fn assert_private_with_socket(dir: &Path) {
    let m = std::fs::symlink_metadata(dir).unwrap();
    assert!(m.is_dir() && m.uid() == 0, "{}", dir.display());
    assert_eq!(m.mode() & 0o777, 0o700, "{}", dir.display());
    assert!(
        dir.join("ctl").exists(),
        "no control socket in {}",
        dir.display()
    );
}

#[test]
fn connect_login_never_uses_a_control_directory_it_did_not_create() {
    if !is_root() {
        common::say_skipped("needs root to create a directory as another user");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let Some(sshd) = Sshd::start(tmp.path()) else {
        return;
    };
    // A shared temp directory, like /tmp: anyone may create in it.
    let shared = tmp.path().join("shared-tmp");
    std::fs::create_dir(&shared).unwrap();
    std::fs::set_permissions(
        &shared,
        std::os::unix::fs::PermissionsExt::from_mode(0o1777),
    )
    .unwrap();
    let (child, pid) = connect_over_ssh(&sshd, &[("TMPDIR", &shared)], true);
    let planted = shared.join(format!("llmgw-connect-0-{pid}"));
    assert!(
        planted.exists(),
        "the other user's directory was not planted"
    );
    let entries: Vec<_> = std::fs::read_dir(&planted).unwrap().collect();
    assert!(
        entries.is_empty(),
        "connect used a directory another user created: {entries:?}"
    );
    let ours: Vec<PathBuf> = control_dirs(&shared)
        .into_iter()
        .filter(|p| *p != planted)
        .collect();
    assert_eq!(ours.len(), 1, "{ours:?}");
    assert_private_with_socket(&ours[0]);
    drop(child);

    // With $XDG_RUNTIME_DIR (private, ours), the directory lives there.
    let xdg = tmp.path().join("xdg");
    std::fs::create_dir(&xdg).unwrap();
    std::fs::set_permissions(&xdg, std::os::unix::fs::PermissionsExt::from_mode(0o700)).unwrap();
    let (child, _) = connect_over_ssh(
        &sshd,
        &[("TMPDIR", &shared), ("XDG_RUNTIME_DIR", &xdg)],
        false,
    );
    let in_xdg = control_dirs(&xdg);
    assert_eq!(in_xdg.len(), 1, "{in_xdg:?}");
    assert_private_with_socket(&in_xdg[0]);
    drop(child);
}
