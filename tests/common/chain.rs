//! What the chain-of-jobs tests share (tests/renew.rs, tests/renew_faults.rs): a renewing
//! gateway's config, bounded polls for its states, `stop` and `status`, and a real sshd for
//! `connect --login`.

use super::cluster::{text, Gw};
use std::process::Command;
use std::time::{Duration, Instant};

pub fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// A renewing gateway: a launched mock "local" (tagged `tag`, extra mock args), a time
/// limit of `time` minutes renewed `before` ahead, and extra `[slurm]` lines.
pub fn chain_config(tag: &str, time: u32, before: &str, mock_args: &str, slurm: &str) -> String {
    format!(
        r#"
[server]
host = "0.0.0.0"
port = 0
shutdown_grace = "5s"

[[models]]
name = "local"
provider = "sglang"
model = "mock-qwen"
launch = {{ command = ["{{llmgw}}", "mock-upstream", "--port", "{{port}}", "--name", "{tag}", "--model", "mock-qwen", "--chunks", "5", "--chunk-delay-ms", "20"{mock_args}], load_timeout = "60s" }}

[slurm]
time = "{time}"
renew = true
renew_before = "{before}"
renew_max = 3
handover_linger = "30s"
{slurm}
"#
    )
}

/// Polls `f` every 250 ms until it returns `Some`, or panics after `limit`.
pub async fn until<T>(limit: Duration, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {limit:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// The endpoint of generation `g` once `endpoint.json` names it: (job id, base URL).
pub async fn generation(gw: &Gw, g: u64, limit: Duration) -> (String, String) {
    until(limit, &format!("generation {g} in endpoint.json"), || {
        let ep = gw.endpoint()?;
        (ep["generation"].as_u64()? >= g).then(|| {
            (
                ep["job_id"].as_str().unwrap_or_default().to_string(),
                format!(
                    "http://{}:{}/v1",
                    ep["host"].as_str().unwrap_or_default(),
                    ep["port"]
                ),
            )
        })
    })
    .await
}

pub fn stop(gw: &Gw) -> String {
    let out = gw.run("stop", &[], Duration::from_secs(120));
    assert!(out.status.success(), "{}", text(&out));
    String::from_utf8_lossy(&out.stdout).to_string()
}

pub fn status_text(gw: &Gw) -> String {
    let out = gw.run("status", &[], Duration::from_secs(30));
    assert!(out.status.success(), "{}", text(&out));
    String::from_utf8_lossy(&out.stdout).to_string()
}

pub fn chain_job_ids(gw: &Gw) -> Vec<String> {
    gw.chain()["jobs"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|j| j["job_id"].as_str().map(str::to_string))
        .collect()
}

/// A real sshd on a loopback port for `root`, with a generated host key and one
/// authorized test key; stopped when dropped.
pub struct Sshd {
    child: std::process::Child,
    pub port: u16,
    pub key: std::path::PathBuf,
    pub known_hosts: std::path::PathBuf,
}

impl Sshd {
    pub fn start(dir: &std::path::Path) -> Option<Sshd> {
        let sshd = ["/usr/sbin/sshd", "/usr/bin/sshd"]
            .into_iter()
            .find(|p| std::path::Path::new(p).exists());
        let Some(sshd) = sshd else {
            super::skip(
                "no sshd to connect over (apt-get install openssh-server; scripts/test.sh does)",
            );
            return None;
        };
        let keygen = |path: &std::path::Path| {
            let ok = Command::new("ssh-keygen")
                .args(["-q", "-t", "ed25519", "-N", "", "-f"])
                .arg(path)
                .status()
                .unwrap()
                .success();
            assert!(ok, "ssh-keygen failed");
        };
        let host_key = dir.join("host_key");
        let key = dir.join("id_test");
        keygen(&host_key);
        keygen(&key);
        std::fs::copy(dir.join("id_test.pub"), dir.join("authorized_keys")).unwrap();
        let port = super::closed_port();
        let conf = dir.join("sshd_config");
        std::fs::write(
            &conf,
            format!(
                "Port {port}\nListenAddress 127.0.0.1\nHostKey {}\nAuthorizedKeysFile {}\n\
                 PidFile {}\nPermitRootLogin prohibit-password\nPasswordAuthentication no\n\
                 KbdInteractiveAuthentication no\nUsePAM no\nStrictModes no\n",
                host_key.display(),
                dir.join("authorized_keys").display(),
                dir.join("sshd.pid").display()
            ),
        )
        .unwrap();
        // sshd's privilege separation directory.
        let _ = std::fs::create_dir_all("/run/sshd");
        let child = Command::new(sshd)
            .args(["-D", "-e", "-f"])
            .arg(&conf)
            .stderr(std::fs::File::create(dir.join("sshd.log")).unwrap())
            .spawn()
            .expect("start sshd");
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "sshd did not listen: {}",
                std::fs::read_to_string(dir.join("sshd.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        Some(Sshd {
            child,
            port,
            key,
            known_hosts: dir.join("known_hosts"),
        })
    }
}

impl Drop for Sshd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The `ssh -M` master a `connect` process runs.
pub fn ssh_master_of(connect_pid: u32) -> Option<u32> {
    let out = Command::new("ps")
        .args(["-o", "pid=,args=", "--ppid", &connect_pid.to_string()])
        .output()
        .ok()?;
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find(|l| l.contains("ssh -M"))
        .and_then(|l| l.split_whitespace().next()?.parse().ok())
}
