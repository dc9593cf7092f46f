//! Where launched backends run: which node of the job and which of its GPUs each replica
//! gets.
//!
//! The job's nodes come from SLURM (`SLURM_JOB_NODELIST`, the batch node is
//! `SLURMD_NODENAME`); a node's GPUs are the ids its processes see, taken from the
//! environment SLURM sets for them (`CUDA_VISIBLE_DEVICES`, else `SLURM_STEP_GPUS` /
//! `SLURM_JOB_GPUS`) — the gateway's own for its node, each node agent's for its node.
//! Outside SLURM the node's `/dev/nvidiaN` devices count. [`place`] then assigns every
//! replica (and every rank of a multi-node server) a node and distinct GPUs, spreading
//! replicas evenly and putting rank 0 on the gateway's node when it can.
//!
//! [`check_request`] is the launcher's side: before `start` submits, a config that needs
//! more GPUs (or nodes) than its `[slurm]` table asks SLURM for is refused in one line.

use llmgw_core::config::{Config, ConfigError, Gpus, LoadedConfig, ModelConfig};
use serde::{Deserialize, Serialize};
use std::ops::Range;

/// One node of the job as placement sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Node {
    /// SLURM's name for it (`-w NAME`).
    pub name: String,
    /// The address its backends bind and the gateway reaches them on.
    pub addr: String,
    /// Its GPU ids, as `CUDA_VISIBLE_DEVICES` names them to its processes.
    pub gpus: Vec<String>,
}

/// This node's name: `SLURMD_NODENAME` in a job, else the short host name.
pub fn node_name() -> String {
    std::env::var("SLURMD_NODENAME")
        .ok()
        .filter(|n| !n.trim().is_empty())
        .unwrap_or_else(|| {
            let h = llmgw_core::host::node_hostname();
            h.split('.').next().unwrap_or(&h).to_string()
        })
}

/// The address `name` resolves to (IPv4 first), for backends that other nodes reach.
pub fn node_addr(name: &str) -> Option<String> {
    use std::net::ToSocketAddrs;
    let addrs: Vec<std::net::SocketAddr> = (name, 0).to_socket_addrs().ok()?.collect();
    addrs
        .iter()
        .find(|a| a.is_ipv4())
        .or(addrs.first())
        .map(|a| a.ip().to_string())
}

/// This node as the gateway (or a node agent) sees it.
pub fn this_node() -> Node {
    let name = node_name();
    let addr = node_addr(&name)
        .or_else(|| node_addr(&llmgw_core::host::node_hostname()))
        .unwrap_or_else(|| "127.0.0.1".into());
    Node {
        name,
        addr,
        gpus: visible_gpus(),
    }
}

/// The GPU ids this process may use, from the environment SLURM sets (see the module doc).
pub fn visible_gpus() -> Vec<String> {
    let var = |k: &str| std::env::var(k).ok();
    let in_slurm = var("SLURM_JOB_ID").is_some();
    gpus_from(
        var("CUDA_VISIBLE_DEVICES").as_deref(),
        var("SLURM_STEP_GPUS")
            .or_else(|| var("SLURM_JOB_GPUS"))
            .as_deref(),
        in_slurm,
    )
}

fn gpus_from(cuda: Option<&str>, slurm: Option<&str>, in_slurm: bool) -> Vec<String> {
    let split = |s: &str| -> Vec<String> {
        s.split(',')
            .map(str::trim)
            .filter(|g| !g.is_empty() && *g != "NoDevFiles")
            .map(str::to_string)
            .collect()
    };
    if let Some(c) = cuda {
        return split(c);
    }
    if let Some(s) = slurm {
        return split(s);
    }
    if in_slurm {
        // A job that asked for no GPUs has none, whatever the node holds.
        return Vec::new();
    }
    let mut ids: Vec<u32> = std::fs::read_dir("/dev")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.strip_prefix("nvidia")?.parse().ok())
        .collect();
    ids.sort_unstable();
    ids.into_iter().map(|i| i.to_string()).collect()
}

/// The other nodes of this SLURM job (none outside SLURM or in a one-node job), each
/// with the CPUs the job holds there (`SLURM_JOB_CPUS_PER_NODE`), when known.
pub async fn other_nodes(this: &str) -> Result<Vec<(String, Option<u32>)>, PlacementError> {
    let var = |k: &str| std::env::var(k).ok().filter(|v| !v.trim().is_empty());
    let count: u32 = var("SLURM_JOB_NUM_NODES")
        .or_else(|| var("SLURM_NNODES"))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or(1);
    let Some(list) = var("SLURM_JOB_NODELIST").or_else(|| var("SLURM_NODELIST")) else {
        return Ok(Vec::new());
    };
    if count <= 1 {
        return Ok(Vec::new());
    }
    let nodes = expand_nodelist(&list).await?;
    let cpus = var("SLURM_JOB_CPUS_PER_NODE")
        .map(|c| cpus_per_node(&c))
        .filter(|c| c.len() == nodes.len());
    Ok(nodes
        .into_iter()
        .enumerate()
        .filter(|(_, n)| n != this)
        .map(|(i, n)| (n, cpus.as_ref().map(|c| c[i])))
        .collect())
}

/// `72(x2),36` → `[72, 72, 36]` (empty when it does not parse).
fn cpus_per_node(s: &str) -> Vec<u32> {
    let mut out = Vec::new();
    for part in s.split(',') {
        let (n, times) = match part.split_once("(x") {
            Some((n, rest)) => (n, rest.trim_end_matches(')').parse::<usize>().ok()),
            None => (part, Some(1)),
        };
        match (n.trim().parse::<u32>(), times) {
            (Ok(n), Some(t)) if t <= 4096 && out.len() + t <= 4096 => {
                out.extend(std::iter::repeat_n(n, t))
            }
            _ => return Vec::new(),
        }
    }
    out
}

/// `n[1-3],gpu07` → every host name, as `scontrol show hostnames` expands it.
async fn expand_nodelist(list: &str) -> Result<Vec<String>, PlacementError> {
    let fail = |why: String| PlacementError::NodeList {
        list: list.to_string(),
        why,
    };
    let mut cmd = tokio::process::Command::new("scontrol");
    cmd.args(["show", "hostnames", list])
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true);
    let out = tokio::time::timeout(std::time::Duration::from_secs(30), cmd.output())
        .await
        .map_err(|_| fail("scontrol did not answer within 30 s".into()))?
        .map_err(|e| fail(format!("cannot run scontrol: {e}")))?;
    if !out.status.success() {
        return Err(fail(
            String::from_utf8_lossy(&out.stderr).trim().to_string(),
        ));
    }
    let names: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(str::to_string)
        .take(4096)
        .collect();
    Ok(names)
}

/// Why backends could not be placed.
#[derive(Debug, thiserror::Error)]
pub enum PlacementError {
    #[error("cannot expand the job's node list {list:?}: {why}")]
    NodeList { list: String, why: String },
    #[error("model {model:?}: replica {replica} needs {need}; the job has {have}; lower launch.replicas, launch.gpus or launch.nnodes, or ask SLURM for more ([slurm] gres, nodes)")]
    NoRoom {
        model: String,
        replica: u32,
        need: String,
        have: String,
    },
    #[error("model {model:?}: launch.gpus lists GPU {gpu}, which this job does not have (it has {have}); list only those, or give a count (gpus = 1)")]
    NotOurs {
        model: String,
        gpu: u32,
        have: String,
    },
}

/// One process to run: a replica of a launched `[[models]]` entry, or one rank of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Placed {
    /// Its `[[models]]` entry, as written (before replicas were expanded).
    pub entry: usize,
    /// 1-based.
    pub replica: u32,
    /// 0 for the server that answers requests; 1.. for the other nodes of a multi-node one.
    pub rank: u32,
    /// Index into the nodes given to [`place`] (0 is the gateway's).
    pub node: usize,
    /// Its `CUDA_VISIBLE_DEVICES`; `None`: whatever the node's processes see.
    pub gpus: Option<Vec<String>>,
}

/// Places every replica of every launched entry of `models` on `nodes` (`nodes[0]` is
/// the gateway's own). Replicas spread evenly (fewest replicas first, then the
/// gateway's node, then node order); a multi-node server takes distinct nodes with
/// rank 0 on the gateway's node when it is one of them; GPUs are handed out in order.
pub fn place(models: &[ModelConfig], nodes: &[Node]) -> Result<Vec<Placed>, PlacementError> {
    let mut free: Vec<Vec<String>> = nodes.iter().map(|n| n.gpus.clone()).collect();
    let mut count = vec![0usize; nodes.len()];
    let mut out = Vec::new();
    for (entry, m) in models.iter().enumerate() {
        let Some(l) = &m.launch else { continue };
        let model = m.name.get_ref().clone();
        let list = match l.gpus.as_ref().map(|g| g.get_ref()) {
            Some(Gpus::List(list)) => Some(list),
            _ => None,
        };
        if let Some(list) = list {
            // Device indices: the gateway's node, shared out in order.
            let per = list.len() / l.replicas.max(1) as usize;
            for (r, chunk) in list.chunks(per.max(1)).enumerate() {
                let ids: Vec<String> = chunk.iter().map(u32::to_string).collect();
                if !nodes[0].gpus.is_empty() {
                    if let Some(g) = chunk
                        .iter()
                        .find(|g| !nodes[0].gpus.contains(&g.to_string()))
                    {
                        return Err(PlacementError::NotOurs {
                            model,
                            gpu: *g,
                            have: describe_ids(&nodes[0].gpus),
                        });
                    }
                }
                free[0].retain(|g| !ids.contains(g));
                count[0] += 1;
                out.push(Placed {
                    entry,
                    replica: r as u32 + 1,
                    rank: 0,
                    node: 0,
                    gpus: Some(ids),
                });
            }
            continue;
        }
        let k = l.gpus_per_replica().unwrap_or(0) as usize;
        let nn = l.nnodes.max(1) as usize;
        for replica in 1..=l.replicas {
            let mut order: Vec<usize> = (0..nodes.len()).filter(|&i| free[i].len() >= k).collect();
            order.sort_by_key(|&i| (count[i], i != 0, i));
            if order.len() < nn {
                let gpus = |k: usize| {
                    if k == 1 {
                        "1 free GPU".to_string()
                    } else {
                        format!("{k} free GPUs")
                    }
                };
                let need = match (nn, k) {
                    (1, 0) => "a node".to_string(),
                    (1, k) => format!("{} on one node", gpus(k)),
                    (n, 0) => format!("{n} nodes"),
                    (n, k) => format!("{n} nodes with {} each", gpus(k)),
                };
                let have = nodes
                    .iter()
                    .zip(&free)
                    .map(|(n, f)| format!("{} ({} GPUs free)", n.name, f.len()))
                    .collect::<Vec<_>>()
                    .join(", ");
                return Err(PlacementError::NoRoom {
                    model,
                    replica,
                    need,
                    have,
                });
            }
            let mut chosen: Vec<usize> = order[..nn].to_vec();
            // Rank 0 on the gateway's node when it is one of them.
            chosen.sort_by_key(|&i| (i != 0, count[i], i));
            for (rank, &node) in chosen.iter().enumerate() {
                let gpus = (k > 0).then(|| free[node].drain(..k).collect());
                count[node] += 1;
                out.push(Placed {
                    entry,
                    replica,
                    rank: rank as u32,
                    node,
                    gpus,
                });
            }
        }
    }
    Ok(out)
}

fn describe_ids(ids: &[String]) -> String {
    if ids.is_empty() {
        "none".into()
    } else {
        ids.join(",")
    }
}

/// Where an entry of an expanded config came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Origin {
    /// The entry as written.
    pub entry: usize,
    /// 1-based replica (1 for an entry without replicas).
    pub replica: u32,
}

/// The config with every launched entry of `replicas = N` written out as N entries (each
/// one deployment: `<group>-<i>` by position in its group, or `<id>-<i>` when the entry
/// has an `id`), and where each new entry came from.
pub fn expand(cfg: &LoadedConfig) -> (LoadedConfig, Vec<Origin>) {
    let mut out = cfg.clone();
    out.config.models.clear();
    out.model_keys.clear();
    let mut origins = Vec::new();
    for (entry, m) in cfg.config.models.iter().enumerate() {
        let n = m.launch.as_ref().map_or(1, |l| l.replicas.max(1));
        for replica in 1..=n {
            let mut copy = m.clone();
            if n > 1 {
                copy.id = m.id.as_ref().map(|id| format!("{id}-{replica}"));
            }
            out.config.models.push(copy);
            out.model_keys
                .push(cfg.model_keys.get(entry).cloned().flatten());
            origins.push(Origin { entry, replica });
        }
    }
    (out, origins)
}

/// GPUs `[slurm]` asks for: per node (`gres`, `--gpus-per-node`) and for the whole job
/// (`gpus`, `--gpus`), read from the table and its `extra_directives`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Requested {
    pub nodes: u32,
    pub per_node: Option<u32>,
    pub total: Option<u32>,
    /// How it was asked for, for messages (`gres = "gpu:4"`).
    pub how: String,
}

impl Requested {
    pub fn of(c: &llmgw_core::config::SlurmConfig) -> Self {
        let mut r = Requested {
            nodes: c.nodes.unwrap_or(1).max(1),
            ..Default::default()
        };
        if let Some(g) = &c.gres {
            if let Some(n) = gres_gpus(g) {
                r.per_node = Some(n);
                r.how = format!("gres = {g:?}");
            }
        }
        if let Some(g) = &c.gpus {
            if let Some(n) = count_of(g) {
                r.total = Some(n);
                r.how = format!("gpus = {g:?}");
            }
        }
        for d in &c.extra_directives {
            let d = d.trim();
            let (flag, value) = d
                .split_once('=')
                .or_else(|| d.split_once(' '))
                .map(|(f, v)| (f.trim(), v.trim()))
                .unwrap_or((d, ""));
            let found = match flag {
                "--gres" => gres_gpus(value).map(|n| (true, n)),
                "--gpus-per-node" => count_of(value).map(|n| (true, n)),
                "--gpus" | "-G" => count_of(value).map(|n| (false, n)),
                _ => None,
            };
            if let Some((per_node, n)) = found {
                if per_node {
                    r.per_node = Some(n);
                } else {
                    r.total = Some(n);
                }
                r.how = format!("extra_directives {d:?}");
            }
        }
        r
    }

    /// GPUs in the whole job.
    pub fn job_total(&self) -> u32 {
        self.total
            .or(self.per_node.map(|p| p.saturating_mul(self.nodes)))
            .unwrap_or(0)
    }

    /// GPUs one node can have at most.
    pub fn node_max(&self) -> u32 {
        self.per_node.or(self.total).unwrap_or(0)
    }

    fn describe(&self) -> String {
        match (self.per_node, self.total) {
            (_, Some(t)) => format!("{t} ({})", self.how),
            (Some(p), None) if self.nodes > 1 => {
                format!(
                    "{} ({} on each of {} nodes)",
                    p * self.nodes,
                    self.how,
                    self.nodes
                )
            }
            (Some(p), None) => format!("{p} ({})", self.how),
            (None, None) => "none (set gres = \"gpu:N\" or gpus = \"N\" in [slurm])".into(),
        }
    }
}

/// GPUs in a `--gres` value: `gpu:4`, `gpu:a100:4`, `gpu` (one), among other GRES.
fn gres_gpus(g: &str) -> Option<u32> {
    g.split(',').find_map(|item| {
        let mut parts = item.trim().split(':');
        if parts.next()? != "gpu" {
            return None;
        }
        let rest: Vec<&str> = parts.collect();
        match rest.last() {
            None => Some(1),
            Some(n) => n
                .parse()
                .ok()
                .or(if rest.len() == 1 { Some(1) } else { None }),
        }
    })
}

/// The count in `[type:]N`.
fn count_of(v: &str) -> Option<u32> {
    v.trim().rsplit(':').next()?.trim().parse().ok()
}

/// What `start` checks before it submits: the launched backends need no more GPUs, per
/// node and in all, and no more nodes, than `[slurm]` asks for. `text` is the config file
/// (for the line and column of the offending `launch`).
pub fn check_request(config: &Config, text: &str, file: &str) -> Result<(), ConfigError> {
    let req = Requested::of(&config.slurm);
    let at = |span: Range<usize>, message: String| {
        let (line, col) = llmgw_core::config::line_col(text, span.start);
        ConfigError::At {
            file: file.to_string(),
            line,
            col,
            message,
        }
    };
    let mut total: u64 = 0;
    for m in &config.models {
        let Some(l) = &m.launch else { continue };
        if l.nnodes > req.nodes {
            return Err(at(
                m.name.span(),
                format!(
                    "model {:?}: launch.nnodes = {} spans more nodes than [slurm] nodes = {} requests; raise nodes or lower nnodes",
                    m.name.get_ref(),
                    l.nnodes,
                    req.nodes
                ),
            ));
        }
        let (Some(g), Some(k)) = (&l.gpus, l.gpus_per_replica()) else {
            continue;
        };
        let here = u64::from(l.replicas) * u64::from(l.nnodes) * u64::from(k);
        total += here;
        let shape = if l.nnodes > 1 {
            format!("{} replicas × {} nodes × {k} GPUs", l.replicas, l.nnodes)
        } else {
            format!("{} replicas × {k} GPUs", l.replicas)
        };
        if k > req.node_max() && req.node_max() > 0 {
            return Err(at(
                g.span(),
                format!(
                    "launch.gpus = {k}: one replica needs {k} GPUs on a node, but [slurm] requests at most {} per node ({}); lower gpus or request more",
                    req.node_max(),
                    req.how
                ),
            ));
        }
        if total > u64::from(req.job_total()) {
            let all = if total > here {
                format!("{total} GPUs in all (this entry: {here} = {shape})")
            } else {
                format!("{here} GPUs ({shape})")
            };
            return Err(at(
                g.span(),
                format!(
                    "launch asks for {all} but [slurm] requests {}; lower replicas or gpus, or request more GPUs",
                    req.describe()
                ),
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use llmgw_core::config::Config;

    fn node(name: &str, gpus: usize) -> Node {
        Node {
            name: name.into(),
            addr: "127.0.0.1".into(),
            gpus: (0..gpus).map(|i| i.to_string()).collect(),
        }
    }

    fn models(launch: &str) -> Vec<ModelConfig> {
        let text = format!("[[models]]\nname = \"m\"\nprovider = \"sglang\"\nlaunch = {launch}\n");
        Config::load_str(&text, "t.toml").unwrap().config.models
    }

    #[test]
    fn four_replicas_get_one_distinct_gpu_each() {
        let p = place(
            &models("{ model_path = \"x\", replicas = 4, gpus = 1 }"),
            &[node("a", 4)],
        )
        .unwrap();
        let gpus: Vec<_> = p
            .iter()
            .map(|p| p.gpus.clone().unwrap().join(","))
            .collect();
        assert_eq!(gpus, ["0", "1", "2", "3"]);
        assert!(p.iter().all(|p| p.node == 0 && p.rank == 0));
        let replicas: Vec<u32> = p.iter().map(|p| p.replica).collect();
        assert_eq!(replicas, [1, 2, 3, 4]);
    }

    #[test]
    fn replicas_spread_over_nodes() {
        let p = place(
            &models("{ model_path = \"x\", replicas = 4 }"),
            &[node("a", 0), node("b", 0)],
        )
        .unwrap();
        let nodes: Vec<usize> = p.iter().map(|p| p.node).collect();
        assert_eq!(nodes, [0, 1, 0, 1]);
        assert!(p.iter().all(|p| p.gpus.is_none()));
    }

    #[test]
    fn multi_node_server_takes_distinct_nodes_rank0_on_the_gateway() {
        let p = place(
            &models("{ model_path = \"x\", nnodes = 2, gpus = 2 }"),
            &[node("a", 2), node("b", 2)],
        )
        .unwrap();
        assert_eq!(p.len(), 2);
        assert_eq!((p[0].rank, p[0].node), (0, 0));
        assert_eq!((p[1].rank, p[1].node), (1, 1));
        assert_eq!(
            p[1].gpus.as_deref(),
            Some(&["0".to_string(), "1".to_string()][..])
        );
    }

    #[test]
    fn too_many_gpus_is_refused_with_the_numbers() {
        let err = place(
            &models("{ model_path = \"x\", replicas = 3, gpus = 2 }"),
            &[node("a", 4)],
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("replica 3 needs 2 free GPUs on one node"),
            "{err}"
        );
        assert!(err.contains("a (0 GPUs free)"), "{err}");
    }

    #[test]
    fn device_list_is_shared_out() {
        let p = place(
            &models("{ model_path = \"x\", replicas = 2, gpus = [2, 3] }"),
            &[node("a", 4)],
        )
        .unwrap();
        let gpus: Vec<_> = p
            .iter()
            .map(|p| p.gpus.clone().unwrap().join(","))
            .collect();
        assert_eq!(gpus, ["2", "3"]);
        let err = place(
            &models("{ model_path = \"x\", gpus = [7] }"),
            &[node("a", 4)],
        )
        .unwrap_err();
        assert!(err.to_string().contains("GPU 7"), "{err}");
    }

    #[test]
    fn gpus_from_the_environment() {
        assert_eq!(gpus_from(Some("2,3"), Some("0,1"), true), ["2", "3"]);
        assert_eq!(gpus_from(None, Some("0,1"), true), ["0", "1"]);
        assert_eq!(
            gpus_from(Some("NoDevFiles"), None, true),
            Vec::<String>::new()
        );
        assert!(gpus_from(None, None, true).is_empty());
    }

    #[test]
    fn cpus_per_node_expands() {
        assert_eq!(cpus_per_node("72(x2),36"), [72, 72, 36]);
        assert_eq!(cpus_per_node("4"), [4]);
        assert!(cpus_per_node("x").is_empty());
    }

    #[test]
    fn expand_writes_out_replicas() {
        let text = "[[models]]\nname = \"m\"\nprovider = \"sglang\"\nlaunch = { model_path = \"x\", replicas = 3 }\n[[models]]\nname = \"m\"\nprovider = \"openai\"\nid = \"cloud\"\n";
        let cfg = Config::load_str(text, "t.toml").unwrap();
        let (x, origins) = expand(&cfg);
        assert_eq!(x.config.models.len(), 4);
        assert_eq!(x.model_keys.len(), 4);
        assert_eq!(
            origins[2],
            Origin {
                entry: 0,
                replica: 3
            }
        );
        assert_eq!(
            origins[3],
            Origin {
                entry: 1,
                replica: 1
            }
        );
        assert_eq!(x.config.models[3].id.as_deref(), Some("cloud"));
    }

    #[test]
    fn slurm_request_parsing() {
        let c = |t: &str| Requested::of(&Config::load_str(t, "t.toml").unwrap().config.slurm);
        let r = c("[slurm]\ngres = \"gpu:a100:4\"\nnodes = 2\n");
        assert_eq!((r.per_node, r.job_total()), (Some(4), 8));
        assert_eq!(c("[slurm]\ngpus = \"h100:3\"\n").job_total(), 3);
        assert_eq!(
            c("[slurm]\nextra_directives = [\"--gpus-per-node=2\"]\n").per_node,
            Some(2)
        );
        assert_eq!(c("[slurm]\ngres = \"gpu\"\n").per_node, Some(1));
        assert_eq!(c("[slurm]\n").job_total(), 0);
    }

    #[test]
    fn start_refuses_more_gpus_than_requested_on_the_launch_line() {
        let text = "[[models]]\nname = \"m\"\nprovider = \"sglang\"\nlaunch = { model_path = \"x\", replicas = 4, gpus = 2 }\n\n[slurm]\ngres = \"gpu:4\"\n";
        let cfg = Config::load_str(text, "t.toml").unwrap();
        let err = check_request(&cfg.config, text, "t.toml")
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("t.toml:4:"), "{err}");
        assert!(err.contains("8 GPUs (4 replicas × 2 GPUs)"), "{err}");
        assert!(err.contains("requests 4 (gres = \"gpu:4\")"), "{err}");
        assert!(!err.contains('\n'), "{err}");
        let ok = text.replace("replicas = 4", "replicas = 2");
        let cfg = Config::load_str(&ok, "t.toml").unwrap();
        check_request(&cfg.config, &ok, "t.toml").unwrap();
        let none = "[[models]]\nname = \"m\"\nprovider = \"sglang\"\nlaunch = { model_path = \"x\", gpus = 1 }\n";
        let cfg = Config::load_str(none, "t.toml").unwrap();
        let err = check_request(&cfg.config, none, "t.toml")
            .unwrap_err()
            .to_string();
        assert!(err.contains("requests none"), "{err}");
    }
}
