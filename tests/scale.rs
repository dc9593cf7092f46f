//! Scaling out on SLURM (issue 14), on the real local cluster (`scripts/local-slurm.sh
//! up`: partition `debug` is one node with 4 emulated GPUs, partition `multi` is two nodes
//! n1 and n2 with 4 each): replicas placed on distinct GPUs, replicas on two nodes
//! through node agents, a server spanning two nodes, load-aware routing with local-first
//! spillover, and the `start` check of GPUs against `[slurm]`.
//!
//! The mock upstream stands in for SGLang (the only test double): it serves `/get_load`,
//! queues past `--max-running`, changes speed when its `--control-file` changes, and does
//! a multi-node rendezvous. Every node of the local cluster is this machine, so a test
//! sees every node's processes in `/proc`.

// Test and benchmark code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
// The serialising guard is held for a whole test on purpose; every test has its own
// runtime and thread, so holding it across awaits blocks nothing but the other tests.
#![allow(clippy::await_holding_lock)]

mod common;

use common::cluster::{cluster, text, Gw};
use common::{chat_body, client, Gateway};
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

/// A mock backend's `command` (TOML array): named after the gateway, its replica, rank
/// and node, requiring the key the gateway gives it; `extra` is appended.
fn mock_command(tag: &str, extra: &str) -> String {
    format!(
        r#"["{{llmgw}}", "mock-upstream", "--port", "{{port}}", "--host", "{{host}}", "--name", "{tag}-r{{replica}}-rank{{rank}}-{{node}}", "--api-key-env", "LLMGW_BACKEND_API_KEY"{extra}]"#
    )
}

/// `[server]` and `[router]` of every config here.
fn head(router: &str) -> String {
    format!(
        "[server]\nhost = \"0.0.0.0\"\nport = 0\nshutdown_grace = \"5s\"\n\n[router]\n{router}\n"
    )
}

/// `[slurm]`: 10 minutes, `extra` lines.
fn slurm(extra: &str) -> String {
    format!("\n[slurm]\ntime = \"00:10:00\"\n{extra}\n")
}

/// `/proc/<pid>/<file>` split at NUL bytes (empty when the process is gone).
fn proc_list(pid: u64, file: &str) -> Vec<String> {
    std::fs::read(format!("/proc/{pid}/{file}"))
        .map(|b| {
            String::from_utf8_lossy(&b)
                .split_terminator('\0')
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default()
}

fn env_var(pid: u64, name: &str) -> Option<String> {
    proc_list(pid, "environ")
        .into_iter()
        .find_map(|kv| kv.strip_prefix(&format!("{name}=")).map(str::to_string))
}

/// Live (not zombie) processes of SLURM job `id`, on any node of this machine's cluster.
fn job_processes(id: &str) -> Vec<(u64, String)> {
    let want = format!("SLURM_JOB_ID={id}");
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u64>().ok())
        .filter(|&pid| !common::cluster::is_zombie(pid))
        .filter(|&pid| proc_list(pid, "environ").contains(&want))
        .map(|pid| (pid, proc_list(pid, "cmdline").join(" ")))
        .collect()
}

/// Asserts that `llmgw stop` leaves no process of the job behind, on any node.
fn stop_and_check_nothing_left(gw: &Gw) {
    let id = gw.job_id().expect("job.json");
    let out = gw.run("stop", &[], Duration::from_secs(60));
    assert!(out.status.success(), "{}", text(&out));
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let left = job_processes(&id);
        if left.is_empty() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "processes of job {id} survived stop: {left:?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// `backends` of `status --json`.
fn backends(gw: &Gw) -> Vec<Value> {
    gw.status_json()["backends"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

/// Polls `status` until `pred` holds for its backends (bounded).
fn wait_backends(
    gw: &Gw,
    what: &str,
    limit: Duration,
    pred: impl Fn(&[Value]) -> bool,
) -> Vec<Value> {
    let deadline = Instant::now() + limit;
    loop {
        let b = backends(gw);
        if pred(&b) {
            return b;
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}: {b:#?}"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// Sends `n` chat requests for `model` with `workers` at a time; returns how many each
/// deployment answered, and the failures.
async fn spread(
    url: &str,
    key: &str,
    model: &str,
    n: usize,
    workers: usize,
) -> (BTreeMap<String, usize>, Vec<String>) {
    let client = client();
    let next = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let tasks: Vec<_> = (0..workers)
        .map(|_| {
            let (client, next) = (client.clone(), next.clone());
            let (url, key, model) = (url.to_string(), key.to_string(), model.to_string());
            tokio::spawn(async move {
                let mut seen = Vec::new();
                while next.fetch_add(1, std::sync::atomic::Ordering::SeqCst) < n {
                    seen.push(one(&client, &url, &key, &model).await);
                }
                seen
            })
        })
        .collect();
    let mut counts = BTreeMap::new();
    let mut failed = Vec::new();
    for t in tasks {
        for r in t.await.unwrap() {
            match r {
                Ok(d) => *counts.entry(d).or_insert(0) += 1,
                Err(e) => failed.push(e),
            }
        }
    }
    (counts, failed)
}

/// One chat request; the deployment that answered it.
async fn one(
    client: &reqwest::Client,
    url: &str,
    key: &str,
    model: &str,
) -> Result<String, String> {
    let resp = client
        .post(format!("{url}/chat/completions"))
        .bearer_auth(key)
        .header("content-type", "application/json")
        .body(chat_body(model, false))
        .send()
        .await
        .map_err(|e| format!("send: {e}"))?;
    let status = resp.status();
    let dep = resp
        .headers()
        .get("x-llmgw-deployment")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let body = resp.text().await.map_err(|e| format!("body: {e}"))?;
    if status != 200 {
        return Err(format!("{status}: {body}"));
    }
    Ok(dep)
}

/// The value of a `/metrics` sample whose line starts with `prefix`.
async fn metric(url: &str, key: &str, prefix: &str) -> u64 {
    let base = url.trim_end_matches("/v1");
    let text = client()
        .get(format!("{base}/metrics"))
        .bearer_auth(key)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .find(|l| l.starts_with(prefix))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
        .unwrap_or_else(|| panic!("no {prefix} in /metrics:\n{text}"))
}

/// True when every local deployment of `group` has a fresh load reading and an empty
/// queue, as `/health` at `base` (`http://host:port`) shows what the router sees.
async fn local_queues_empty(base: &str, key: Option<&str>, group: &str) -> bool {
    let mut req = client().get(format!("{base}/health"));
    if let Some(k) = key {
        req = req.bearer_auth(k);
    }
    let Ok(resp) = req.send().await else {
        return false;
    };
    let h = common::json_body(resp).await;
    let local: Vec<&Value> = h["deployments"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|d| d["model_group"] == group && d["local"] == true)
        .collect();
    !local.is_empty()
        && local.iter().all(|d| {
            let q = &d["queue"];
            q["polled"] == true && q["running"] == 0 && q["waiting"] == 0
        })
}

/// Writes a mock's control file whole (a new file renamed into place), so the mock, which
/// reads it when its modification time changes, never reads it half-written.
fn write_control(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

fn ids(backends: &[Value], field: &str) -> Vec<String> {
    backends
        .iter()
        .map(|b| b[field].as_str().unwrap_or("").to_string())
        .collect()
}

/// Acceptance 1: one node, `replicas = 4, gpus = 1` over its 4 GPUs: four backends, each
/// seeing exactly one distinct GPU; requests spread over them; one killed is restarted
/// while the other three serve, with no failed request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn four_replicas_on_four_gpus_spread_load_and_survive_a_kill() {
    let Some(_cluster) = cluster() else { return };
    let gw = Gw::new("gpus");
    let cfg = gw.config(&format!(
        "{}[[models]]\nname = \"local\"\nprovider = \"sglang\"\nmodel = \"mock\"\nlaunch = {{ command = {}, replicas = 4, gpus = 1, load_timeout = \"60s\" }}\n{}",
        head(""),
        mock_command(&gw.name, ""),
        slurm("gres = \"gpu:4\"")
    ));
    let j = gw.start_json(&cfg);
    let (url, key) = (j["url"].as_str().unwrap().to_string(), gw.key());

    let b = backends(&gw);
    assert_eq!(b.len(), 4, "{b:#?}");
    let mut gpus: Vec<String> = Vec::new();
    for x in &b {
        assert_eq!(x["state"], "ready", "{x}");
        let g: Vec<String> = serde_json::from_value(x["gpus"].clone()).expect("gpus");
        assert_eq!(g.len(), 1, "one GPU each: {x}");
        let pid = x["pid"].as_u64().expect("pid");
        // What the process itself sees is what placement said.
        assert_eq!(
            env_var(pid, "CUDA_VISIBLE_DEVICES").as_deref(),
            Some(g[0].as_str()),
            "{x}"
        );
        gpus.push(g[0].clone());
    }
    gpus.sort();
    assert_eq!(gpus, ["0", "1", "2", "3"], "four distinct GPUs of the job");
    assert_eq!(
        ids(&b, "deployment"),
        ["local-1", "local-2", "local-3", "local-4"]
    );
    let status = gw.run("status", &[], Duration::from_secs(30));
    let status = String::from_utf8_lossy(&status.stdout).to_string();
    assert!(
        status.contains("gpus") && status.contains("queue"),
        "{status}"
    );
    assert!(
        status
            .lines()
            .any(|l| l.trim_start().starts_with("local-2") && l.contains("ready")),
        "{status}"
    );

    // Spread: every replica answers some of 60 requests.
    let (counts, failed) = spread(&url, &key, "local", 60, 4).await;
    assert!(failed.is_empty(), "{failed:?}");
    assert_eq!(counts.len(), 4, "{counts:?}");
    assert!(counts.values().all(|&n| n >= 3), "{counts:?}");

    // Kill one under a steady load: it comes back, the others serve meanwhile.
    let load = common::load::Load::start(&url, &key, "local", 20.0, 4);
    load.wait_for_outcomes(10).await;
    let victim = b.iter().find(|x| x["deployment"] == "local-2").unwrap();
    let pid = victim["pid"].as_u64().unwrap() as i32;
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let gw2 = &gw;
    let back = tokio::task::block_in_place(|| {
        wait_backends(
            gw2,
            "the killed replica to restart",
            Duration::from_secs(40),
            |b| {
                b.iter().any(|x| {
                    x["deployment"] == "local-2"
                        && x["state"] == "ready"
                        && x["restarts"].as_u64() >= Some(1)
                })
            },
        )
    });
    let again = back.iter().find(|x| x["deployment"] == "local-2").unwrap();
    assert_eq!(again["gpus"], victim["gpus"], "it keeps its GPU");
    // The load goes on past the restart.
    let so_far = load.snapshot().len();
    load.wait_for_outcomes(so_far + 20).await;
    let outcomes = load.finish().await;
    let failures = common::load::failures(&outcomes);
    assert!(outcomes.len() > 40, "{} requests", outcomes.len());
    assert!(
        failures.is_empty(),
        "{} of {} failed: {failures:?}",
        failures.len(),
        outcomes.len()
    );

    tokio::task::block_in_place(|| stop_and_check_nothing_left(&gw));
}

/// Acceptance 2: two nodes, `replicas = 4`: two on each node; all answer through the
/// gateway; the remote ones listen on their node's address and refuse anyone without
/// the per-job key, which shows in no command line and no log; a node agent that dies
/// takes only its node's replicas out of rotation (no failed request) and comes back;
/// `stop` leaves no process on either node.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_on_two_nodes_reachable_only_with_the_key_and_a_lost_node_is_routed_around() {
    let Some(_cluster) = cluster() else { return };
    let gw = Gw::new("nodes");
    let cfg = gw.config(&format!(
        "{}[[models]]\nname = \"local\"\nprovider = \"sglang\"\nmodel = \"mock\"\nlaunch = {{ command = {}, replicas = 4, gpus = 1, load_timeout = \"60s\" }}\n{}",
        head(""),
        mock_command(&gw.name, ""),
        slurm("partition = \"multi\"\nnodes = 2\ngres = \"gpu:2\"")
    ));
    let j = gw.start_json(&cfg);
    let (url, key) = (j["url"].as_str().unwrap().to_string(), gw.key());
    let id = gw.job_id().unwrap();

    let b = backends(&gw);
    let mut per_node: BTreeMap<String, usize> = BTreeMap::new();
    for x in &b {
        assert_eq!(x["state"], "ready", "{x}");
        *per_node
            .entry(x["node"].as_str().unwrap().to_string())
            .or_default() += 1;
    }
    assert_eq!(
        per_node,
        BTreeMap::from([("n1".into(), 2), ("n2".into(), 2)]),
        "{b:#?}"
    );
    let n2_addr = {
        use std::net::ToSocketAddrs;
        ("n2", 0)
            .to_socket_addrs()
            .unwrap()
            .next()
            .unwrap()
            .ip()
            .to_string()
    };
    let remote: Vec<&Value> = b.iter().filter(|x| x["node"] == "n2").collect();

    // Everyone answers through the gateway.
    let (counts, failed) = spread(&url, &key, "local", 60, 4).await;
    assert!(failed.is_empty(), "{failed:?}");
    assert_eq!(counts.len(), 4, "{counts:?}");

    // The remote ones: on n2's address, only with their key.
    for x in &remote {
        assert_eq!(x["host"], n2_addr.as_str(), "binds its node's address: {x}");
        let pid = x["pid"].as_u64().unwrap();
        assert_eq!(
            env_var(pid, "SLURM_STEP_NODELIST").as_deref(),
            Some("n2"),
            "runs on n2"
        );
        let models = format!("http://{}:{}/v1/models", n2_addr, x["port"]);
        let get = |k: Option<String>| {
            let mut r = client().get(&models);
            if let Some(k) = k {
                r = r.bearer_auth(k);
            }
            r.send()
        };
        assert_eq!(
            get(None).await.unwrap().status(),
            401,
            "open without a key: {x}"
        );
        assert_eq!(
            get(Some(key.clone())).await.unwrap().status(),
            401,
            "the master key is not its key"
        );
        let secret = env_var(pid, "LLMGW_BACKEND_API_KEY").expect("the backend's key");
        assert_eq!(get(Some(secret.clone())).await.unwrap().status(), 200);
        // Never on a command line (the node agent got it over its input), nor in a log.
        for (p, cmd) in job_processes(&id) {
            assert!(
                !cmd.contains(&secret),
                "the key is in the command line of {p}: {cmd}"
            );
        }
        for f in walk(&gw.dir) {
            let content = std::fs::read(&f).unwrap_or_default();
            assert!(
                !String::from_utf8_lossy(&content).contains(&secret),
                "the key is in {}",
                f.display()
            );
        }
    }

    // n2's agent dies (and its backends with it): only n2's replicas leave the rotation.
    let agent = job_processes(&id)
        .into_iter()
        .find(|(pid, cmd)| {
            cmd.ends_with(" agent") && env_var(*pid, "SLURMD_NODENAME").as_deref() == Some("n2")
        })
        .expect("the node agent on n2");
    let load = common::load::Load::start(&url, &key, "local", 20.0, 4);
    load.wait_for_outcomes(10).await;
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(agent.0 as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let gw2 = &gw;
    let back = tokio::task::block_in_place(|| {
        wait_backends(
            gw2,
            "the agent and n2's replicas back",
            Duration::from_secs(60),
            |b| {
                b.iter().all(|x| x["state"] == "ready")
                    && b.iter()
                        .filter(|x| x["node"] == "n2")
                        .all(|x| x["restarts"].as_u64() >= Some(1))
            },
        )
    });
    // n1's replicas were never touched.
    assert!(
        back.iter()
            .filter(|x| x["node"] == "n1")
            .all(|x| x["restarts"] == 0),
        "{back:#?}"
    );
    let ports = |b: &[&Value]| {
        let mut p: Vec<u64> = b.iter().map(|x| x["port"].as_u64().unwrap()).collect();
        p.sort();
        p
    };
    let again: Vec<&Value> = back.iter().filter(|x| x["node"] == "n2").collect();
    assert_eq!(
        ports(&again),
        ports(&remote),
        "the same ports (the router's URLs stay right)"
    );
    let log =
        std::fs::read_to_string(j["log"].as_str().unwrap().replace("%j", &id)).unwrap_or_default();
    assert!(
        log.contains("node agent lost"),
        "the gateway noticed: {log}"
    );
    let outcomes = load.finish().await;
    let failures = common::load::failures(&outcomes);
    assert!(
        failures.is_empty(),
        "{} of {} failed: {failures:?}",
        failures.len(),
        outcomes.len()
    );
    let (counts, failed) = spread(&url, &key, "local", 40, 4).await;
    assert!(failed.is_empty(), "{failed:?}");
    assert_eq!(counts.len(), 4, "n2's replicas serve again: {counts:?}");

    tokio::task::block_in_place(|| stop_and_check_nothing_left(&gw));
}

/// Every file under `dir`.
fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}

/// Acceptance 3: `nnodes = 2`: one server over both nodes; each rank gets its rank, the
/// node count and rank 0's rendezvous address on its node's address; the group is ready
/// when rank 0 is (the mock's rank 0 answers only once rank 1 has joined it); when rank 1
/// dies, the server comes back whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_over_two_nodes_gets_its_ranks_and_is_ready_with_rank0() {
    let Some(_cluster) = cluster() else { return };
    let gw = Gw::new("ranks");
    let cfg = gw.config(&format!(
        "{}[[models]]\nname = \"big\"\nprovider = \"sglang\"\nmodel = \"mock\"\nlaunch = {{ command = {}, nnodes = 2, tp = 4, gpus = 2, load_timeout = \"60s\" }}\n{}",
        head(""),
        mock_command(&gw.name, ""),
        slurm("partition = \"multi\"\nnodes = 2\ngres = \"gpu:2\"")
    ));
    let j = gw.start_json(&cfg);
    let (url, key) = (j["url"].as_str().unwrap().to_string(), gw.key());
    let b = backends(&gw);
    assert_eq!(b.len(), 2, "{b:#?}");
    let (r0, r1) = (&b[0], &b[1]);
    assert_eq!(
        (r0["rank"].as_u64(), r0["node"].as_str()),
        (Some(0), Some("n1")),
        "{b:#?}"
    );
    assert_eq!(
        (r1["rank"].as_u64(), r1["node"].as_str()),
        (Some(1), Some("n2")),
        "{b:#?}"
    );
    assert_eq!(
        r0["deployment"], r1["deployment"],
        "one server, one deployment"
    );
    let n1_addr = {
        use std::net::ToSocketAddrs;
        ("n1", 0)
            .to_socket_addrs()
            .unwrap()
            .next()
            .unwrap()
            .ip()
            .to_string()
    };
    let args = |x: &Value| proc_list(x["pid"].as_u64().unwrap(), "cmdline");
    let flag = |argv: &[String], f: &str| {
        argv.iter()
            .position(|a| a == f)
            .and_then(|i| argv.get(i + 1).cloned())
            .unwrap_or_else(|| panic!("{f} missing: {argv:?}"))
    };
    let (a0, a1) = (args(r0), args(r1));
    assert_eq!(flag(&a0, "--nnodes"), "2");
    assert_eq!(flag(&a1, "--nnodes"), "2");
    assert_eq!(flag(&a0, "--node-rank"), "0");
    assert_eq!(flag(&a1, "--node-rank"), "1");
    let addr = flag(&a0, "--dist-init-addr");
    assert!(
        addr.starts_with(&format!("{n1_addr}:")),
        "rank 0's node address: {addr}"
    );
    assert_eq!(
        flag(&a1, "--dist-init-addr"),
        addr,
        "rank 1 gets rank 0's address"
    );
    assert_eq!(
        env_var(r1["pid"].as_u64().unwrap(), "SLURM_STEP_NODELIST").as_deref(),
        Some("n2")
    );
    // Rank 0 became ready (and the gateway with it) only after rank 1 joined it.
    let log0 = std::fs::read_to_string(r0["log"].as_str().unwrap()).unwrap();
    assert!(
        log0.contains("rank 1 joined") && log0.contains("all 2 ranks joined"),
        "{log0}"
    );
    let (counts, failed) = spread(&url, &key, "big", 5, 1).await;
    assert!(failed.is_empty(), "{failed:?}");
    assert_eq!(counts.keys().collect::<Vec<_>>(), ["big-1"]);

    // Rank 1 dies: rank 0 loses its peer and exits too; both are restarted and rejoin.
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(r1["pid"].as_u64().unwrap() as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let gw2 = &gw;
    tokio::task::block_in_place(|| {
        wait_backends(
            gw2,
            "both ranks restarted and ready",
            Duration::from_secs(60),
            |b| {
                b.iter()
                    .all(|x| x["state"] == "ready" && x["restarts"].as_u64() >= Some(1))
            },
        )
    });
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (_, failed) = spread(&url, &key, "big", 1, 1).await;
        if failed.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the server did not come back: {failed:?}"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    tokio::task::block_in_place(|| stop_and_check_nothing_left(&gw));
}

/// Acceptance 4: load-based routing sends at least 90 % of new requests past a replica
/// whose queue grows; with local-first spillover, overflow reaches the cloud deployment
/// once the local queues pass the depth, and stops when they drain (`/metrics` counts it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn load_based_routing_avoids_a_slow_replica_and_overflow_spills_to_the_cloud() {
    let Some(_cluster) = cluster() else { return };
    let cloud = common::mock("cloud-mock", llmgw::mock::Behavior::default()).await;
    let gw = Gw::new("load");
    let ctl = gw._tmp.path().join("ctl");
    std::fs::create_dir_all(&ctl).unwrap();
    // The "burst" replicas answer one request at a time, in 300 ms.
    for r in 1..=2 {
        std::fs::write(
            ctl.join(format!("burst-{r}.json")),
            r#"{"first_byte_delay_ms": 300}"#,
        )
        .unwrap();
    }
    let fast = mock_command(
        &gw.name,
        &format!(
            r#", "--control-file", "{}/fast-{{replica}}.json""#,
            ctl.display()
        ),
    );
    let burst = mock_command(
        &format!("{}-b", gw.name),
        &format!(
            r#", "--max-running", "1", "--control-file", "{}/burst-{{replica}}.json""#,
            ctl.display()
        ),
    );
    let cfg = gw.config(&format!(
        "{}[[models]]\nname = \"fast\"\nprovider = \"sglang\"\nmodel = \"mock\"\nlaunch = {{ command = {fast}, replicas = 3, load_timeout = \"60s\" }}\n\n\
         [[models]]\nname = \"burst\"\nprovider = \"sglang\"\nmodel = \"mock\"\nlaunch = {{ command = {burst}, replicas = 2, load_timeout = \"60s\" }}\n\n{}{}",
        head("strategy = \"load-based\"\nspillover = { queue = 1 }"),
        common::openai_model("burst", "mock-cloud", &cloud.base_url(), ""),
        slurm("")
    ));
    let j = gw.start_json(&cfg);
    let (url, key) = (j["url"].as_str().unwrap().to_string(), gw.key());

    // One replica gets slow (once its mock says it read the change): its queue grows,
    // and new requests go to the other two.
    let slow_ctl = r#"{"first_byte_delay_ms": 1500}"#;
    write_control(&ctl.join("fast-1.json"), slow_ctl);
    let fast1 = backends(&gw)
        .into_iter()
        .find(|b| b["deployment"] == "fast-1")
        .expect("backend fast-1");
    let fast1_log = fast1["log"].as_str().expect("fast-1's log").to_string();
    let applied = format!("control file {slow_ctl}");
    let deadline = Instant::now() + Duration::from_secs(10);
    while !std::fs::read_to_string(&fast1_log).is_ok_and(|l| l.contains(&applied)) {
        assert!(
            Instant::now() < deadline,
            "fast-1's mock did not apply {slow_ctl}: {}",
            std::fs::read_to_string(&fast1_log).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (counts, failed) = spread(&url, &key, "fast", 600, 8).await;
    assert!(failed.is_empty(), "{failed:?}");
    let total: usize = counts.values().sum();
    let slow = counts.get("fast-1").copied().unwrap_or(0);
    eprintln!("load-based, fast-1 slow: {counts:?}");
    assert!(
        slow * 10 <= total,
        "the slow replica got {slow} of {total}: {counts:?}"
    );
    assert!(counts.len() >= 2, "{counts:?}");

    // Local first: a burst fills both local queues; the overflow goes to the cloud.
    let before = cloud.state.request_count();
    let (counts, failed) = spread(&url, &key, "burst", 60, 12).await;
    assert!(failed.is_empty(), "{failed:?}");
    let to_cloud = cloud.state.request_count() - before;
    eprintln!("burst: {counts:?}, {to_cloud} to the cloud");
    assert!(to_cloud > 0, "no overflow reached the cloud: {counts:?}");
    assert!(
        counts.contains_key("burst-1") && counts.contains_key("burst-2"),
        "{counts:?}"
    );
    let spilled = metric(
        &url,
        &key,
        "llmgw_spillover_total{model_group=\"burst\",to=\"cloud\"}",
    )
    .await;
    assert_eq!(
        spilled as usize,
        counts.get("burst-3").copied().unwrap_or(0),
        "{counts:?}"
    );
    assert!(spilled > 0);
    let health = client()
        .get(format!("{}/health", url.trim_end_matches("/v1")))
        .bearer_auth(&key)
        .send()
        .await
        .unwrap();
    let health = common::json_body(health).await;
    assert_eq!(
        health["groups"]["burst"]["spillover"]["cloud"], spilled,
        "{health}"
    );
    let status = gw.run("status", &[], Duration::from_secs(30));
    let status = String::from_utf8_lossy(&status.stdout).to_string();
    assert!(
        status.contains(&format!(
            "burst: {spilled} requests spilled over to cloud deployments"
        )),
        "{status}"
    );

    // Drained (as the router sees it: both local queues polled empty): one request at a
    // time stays local; no more spillover.
    let base = url.trim_end_matches("/v1").to_string();
    common::wait_for(
        Duration::from_secs(15),
        "burst's local queues to drain",
        || async {
            local_queues_empty(&base, Some(&key), "burst")
                .await
                .then_some(())
        },
    )
    .await;
    let before = cloud.state.request_count();
    let (counts, failed) = spread(&url, &key, "burst", 6, 1).await;
    assert!(failed.is_empty(), "{failed:?}");
    assert_eq!(
        cloud.state.request_count(),
        before,
        "spilled although the queues drained: {counts:?}"
    );
    assert_eq!(
        metric(
            &url,
            &key,
            "llmgw_spillover_total{model_group=\"burst\",to=\"cloud\"}"
        )
        .await,
        spilled
    );
    let out = gw.run("stop", &[], Duration::from_secs(60));
    assert!(out.status.success(), "{}", text(&out));
}

/// Acceptance 5: a config asking for more GPUs than `[slurm]` requests fails at `start`
/// with one line naming both numbers and the config line; nothing is submitted.
#[test]
fn start_refuses_more_gpus_than_slurm_requests() {
    let gw = Gw::new("toomany");
    let cfg = gw.config(&format!(
        "{}[[models]]\nname = \"local\"\nprovider = \"sglang\"\nmodel = \"mock\"\nlaunch = {{ model_path = \"/models/x\", replicas = 4, gpus = 2 }}\n{}",
        head(""),
        slurm("gres = \"gpu:4\"")
    ));
    let out = gw.run(
        "start",
        &["-c", &cfg.display().to_string()],
        Duration::from_secs(30),
    );
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    assert_eq!(err.trim_end().lines().count(), 1, "one line: {err}");
    let launch_line = std::fs::read_to_string(&cfg)
        .unwrap()
        .lines()
        .position(|l| l.starts_with("launch = "))
        .unwrap()
        + 1;
    assert!(
        err.contains(&format!("{}:{launch_line}:", cfg.display())),
        "names the launch line {launch_line}: {err}"
    );
    assert!(
        err.contains("8 GPUs (4 replicas × 2 GPUs)") && err.contains("requests 4"),
        "{err}"
    );
    assert!(gw.job_id().is_none(), "nothing was submitted");
}

/// Local first without a cloud deployment in the group: when every local backend is full,
/// requests go to the group's fallback (`x-llmgw-fallback`), and come back once the queue
/// drains. No SLURM: the gateway in front of two in-process mocks.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_local_group_spills_to_its_fallback_and_returns() {
    let local = common::mock(
        "local",
        llmgw::mock::Behavior {
            max_running: Some(1),
            first_byte_delay: Duration::from_millis(300),
            ..Default::default()
        },
    )
    .await;
    let cloud = common::mock("cloud", llmgw::mock::Behavior::default()).await;
    let gw = Gateway::start(&format!(
        "[router]\nstrategy = \"load-based\"\nspillover = {{ queue = 1 }}\nfallbacks = {{ local = [\"cloud\"] }}\n\n\
         [[models]]\nname = \"local\"\nprovider = \"sglang\"\nmodel = \"mock\"\napi_base = \"{}\"\n\n{}",
        local.base_url(),
        common::openai_model("cloud", "mock", &cloud.base_url(), "")
    ))
    .await;
    // Four clients keep asking: its queue grows past the depth and the fallback takes
    // the overflow.
    let workers: Vec<_> = (0..4)
        .map(|_| {
            let c = gw.client();
            let u = gw.url("/v1/chat/completions");
            tokio::spawn(async move {
                let mut seen = Vec::new();
                for _ in 0..8 {
                    let r = c
                        .post(&u)
                        .header("content-type", "application/json")
                        .body(chat_body("local", false))
                        .send()
                        .await
                        .unwrap();
                    seen.push((
                        r.status().as_u16(),
                        r.headers()
                            .get("x-llmgw-fallback")
                            .map(|v| v.to_str().unwrap().to_string()),
                    ));
                }
                seen
            })
        })
        .collect();
    let mut fell_back = 0;
    for t in workers {
        for (status, fallback) in t.await.unwrap() {
            assert_eq!(status, 200);
            if fallback.as_deref() == Some("cloud") {
                fell_back += 1;
            }
        }
    }
    assert!(
        fell_back > 0 && cloud.state.request_count() > 0,
        "no spillover to the fallback"
    );
    assert!(local.state.request_count() >= 1);
    let metrics = gw.get("/metrics").await.text().await.unwrap();
    assert!(
        metrics.contains(&format!(
            "llmgw_spillover_total{{model_group=\"local\",to=\"fallback\"}} {fell_back}"
        )),
        "{metrics}"
    );
    // Drained (as the router sees it: the local queue polled empty): back to local.
    let base = gw.url("");
    common::wait_for(
        Duration::from_secs(15),
        "the local queue to drain",
        || async { local_queues_empty(&base, None, "local").await.then_some(()) },
    )
    .await;
    let before = cloud.state.request_count();
    for _ in 0..3 {
        let r = gw
            .post_json("/v1/chat/completions", &chat_body("local", false))
            .await;
        assert_eq!(r.status(), 200);
        assert!(r.headers().get("x-llmgw-fallback").is_none());
    }
    assert_eq!(cloud.state.request_count(), before);
    // /health shows the local queue and the count.
    let h = common::json_body(gw.get("/health").await).await;
    assert_eq!(
        h["groups"]["local"]["spillover"]["fallback"], fell_back,
        "{h}"
    );
    assert_eq!(h["deployments"][0]["local"], true, "{h}");
    assert!(
        h["deployments"][0]["queue"]["polled"].as_bool().unwrap(),
        "{h}"
    );
}
