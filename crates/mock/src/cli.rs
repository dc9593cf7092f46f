//! `llmgw mock-upstream`: the mock as its own process (benchmarks, the demo, a stand-in
//! for SGLang), and its control file.

use super::*;

/// `llmgw mock-upstream`: run the mock as a process.
#[derive(clap::Args, Debug)]
pub struct MockArgs {
    #[arg(long, default_value = "127.0.0.1")]
    pub host: String,
    /// 0 picks a free port (printed on stdout).
    #[arg(long, default_value_t = 0)]
    pub port: u16,
    #[arg(long, default_value = "mock")]
    pub name: String,
    /// Model ids for /v1/models.
    #[arg(long = "model", default_value = "mock-model")]
    pub models: Vec<String>,
    #[arg(long, default_value_t = 5)]
    pub chunks: usize,
    #[arg(long, default_value_t = 0)]
    pub chunk_delay_ms: u64,
    #[arg(long, default_value_t = 0)]
    pub first_byte_delay_ms: u64,
    /// `/health` answers 503 for this long after start (simulated model load).
    #[arg(long, default_value_t = 0)]
    pub load_ms: u64,
    /// Exit with status 1 this long after start (simulated crash).
    #[arg(long)]
    pub crash_after_ms: Option<u64>,
    /// Fail requests with this HTTP status…
    #[arg(long)]
    pub fail_status: Option<u16>,
    /// …on this fraction of requests.
    #[arg(long, default_value_t = 1.0)]
    pub fail_rate: f64,
    /// Require `Authorization: Bearer $NAME` (like SGLang's --api-key, but read
    /// from the environment: `serve` passes a launched backend's key in
    /// LLMGW_BACKEND_API_KEY).
    #[arg(long, value_name = "NAME")]
    pub api_key_env: Option<String>,
    /// Answer at most this many requests at once; more wait (reported by /get_load).
    #[arg(long)]
    pub max_running: Option<u64>,
    /// Model a prefix cache of this many prompt chunks (256 bytes each; 0: none): the
    /// first byte waits --prefill-us-per-chunk for every chunk past the longest prefix it
    /// holds (what prefix-aware routing saves; scripts/bench-prefix.sh).
    #[arg(long, default_value_t = 0)]
    pub prefix_cache_chunks: usize,
    #[arg(long, default_value_t = 0)]
    pub prefill_us_per_chunk: u64,
    /// A JSON file read every 100 ms while the mock runs, changing how it answers:
    /// `{"first_byte_delay_ms": 2000, "max_running": 1}` (a test makes one replica slow).
    #[arg(long, value_name = "PATH")]
    pub control_file: Option<std::path::PathBuf>,
    /// A multi-node server, as SGLang's flags say: rank 0 serves HTTP once every other
    /// rank has joined it at --dist-init-addr; the other ranks only join (and exit when
    /// rank 0 goes away, as a torch.distributed peer would).
    #[arg(long, default_value_t = 1)]
    pub nnodes: u32,
    #[arg(long, default_value_t = 0)]
    pub node_rank: u32,
    #[arg(long, value_name = "HOST:PORT")]
    pub dist_init_addr: Option<String>,
    /// Accepted for command-line compatibility with SGLang launch lines and ignored.
    #[arg(trailing_var_arg = true, allow_hyphen_values = true, hide = true)]
    pub ignored: Vec<String>,
}

pub fn main(args: MockArgs) -> anyhow::Result<ExitCode> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    if args.nnodes > 1 && args.node_rank > 0 {
        return rt.block_on(rendezvous::join(&args));
    }
    rt.block_on(async move {
        let addr: SocketAddr = format!("{}:{}", args.host, args.port).parse()?;
        let api_key =
            match &args.api_key_env {
                Some(name) => Some(std::env::var(name).map_err(|_| {
                    anyhow::anyhow!("--api-key-env {name}: the variable is not set")
                })?),
                None => None,
            };
        let behavior = Behavior {
            api_key,
            chunks: args.chunks,
            chunk_delay: Duration::from_millis(args.chunk_delay_ms),
            first_byte_delay: Duration::from_millis(args.first_byte_delay_ms),
            fault: args.fail_status.map(|status| Fault {
                status,
                rate: args.fail_rate,
                retry_after: None,
                message: format!("mock {} injected {status}", args.name),
            }),
            models: args.models.clone(),
            max_running: args.max_running,
            prefix_cache_chunks: args.prefix_cache_chunks,
            prefill_per_chunk: Duration::from_micros(args.prefill_us_per_chunk),
            ..Behavior::default()
        };
        let mock = MockUpstream::start_on(addr, &args.name, behavior).await?;
        if let Some(path) = &args.control_file {
            tokio::spawn(follow_control_file(path.clone(), mock.state.clone()));
        }
        if args.nnodes > 1 {
            // Not ready (health 503) until every other rank has joined.
            mock.state.loaded.store(false, Ordering::SeqCst);
            tokio::spawn(rendezvous::host(
                args.dist_init_addr.clone().unwrap_or_default(),
                args.nnodes,
                mock.state.clone(),
            ));
        }
        if args.load_ms > 0 && args.nnodes <= 1 {
            mock.state.loaded.store(false, Ordering::SeqCst);
            let st = mock.state.clone();
            let load = Duration::from_millis(args.load_ms);
            tokio::spawn(async move {
                tokio::time::sleep(load).await;
                st.loaded.store(true, Ordering::SeqCst);
            });
        }
        println!(
            "mock upstream {} listening on http://{}/v1",
            args.name, mock.addr
        );
        use tokio::signal::unix::{signal, SignalKind};
        let mut term = signal(SignalKind::terminate())?;
        let crash = async {
            match args.crash_after_ms {
                Some(ms) => tokio::time::sleep(Duration::from_millis(ms)).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = term.recv() => Ok(ExitCode::SUCCESS),
            _ = tokio::signal::ctrl_c() => Ok(ExitCode::SUCCESS),
            _ = crash => {
                eprintln!("mock upstream {}: simulated crash", args.name);
                Ok(ExitCode::from(1))
            }
        }
    })
}

/// Applies `{"first_byte_delay_ms", "chunk_delay_ms", "max_running"}` from `path` each
/// time it changes (checked every 100 ms).
pub(crate) async fn follow_control_file(path: std::path::PathBuf, state: Arc<MockState>) {
    #[derive(Deserialize)]
    struct Control {
        first_byte_delay_ms: Option<u64>,
        chunk_delay_ms: Option<u64>,
        #[serde(default, deserialize_with = "some_or_null")]
        max_running: Option<Option<u64>>,
    }
    pub(crate) fn some_or_null<'de, D: serde::Deserializer<'de>>(
        d: D,
    ) -> Result<Option<Option<u64>>, D::Error> {
        Option::<u64>::deserialize(d).map(Some)
    }
    let mut seen: Option<std::time::SystemTime> = None;
    loop {
        let modified = std::fs::metadata(&path).and_then(|m| m.modified()).ok();
        if modified.is_some() && modified != seen {
            seen = modified;
            let text = std::fs::read_to_string(&path).unwrap_or_default();
            match serde_json::from_str::<Control>(&text) {
                Ok(c) => {
                    println!("mock {}: control file {text}", state.name);
                    state.set_behavior(|b| {
                        if let Some(ms) = c.first_byte_delay_ms {
                            b.first_byte_delay = Duration::from_millis(ms);
                        }
                        if let Some(ms) = c.chunk_delay_ms {
                            b.chunk_delay = Duration::from_millis(ms);
                        }
                        if let Some(m) = c.max_running {
                            b.max_running = m;
                        }
                    });
                    state.slot_free.notify_waiters();
                }
                Err(e) => eprintln!("mock {}: control file: {e}", state.name),
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
