//! What the config's launched backends and shared services need: the backend's command
//! or SGLang's python, Redis, the login host.

use super::*;

// --- the ssh line ------------------------------------------------------------------

pub(crate) async fn login_host_check(config: Option<&Config>) -> Check {
    let c = check("login-host", "login host");
    let configured = config.and_then(|c| c.slurm.login_host.as_deref());
    let (host, from) = login_host_from(configured);
    let fix = "set [slurm] login_host = \"login.your-cluster.example\": the name you ssh to from your laptop";
    let lookup = host.clone();
    let resolves = tokio::time::timeout(
        DNS_TIMEOUT,
        tokio::task::spawn_blocking(move || {
            use std::net::ToSocketAddrs as _;
            (lookup.as_str(), 22)
                .to_socket_addrs()
                .is_ok_and(|mut a| a.next().is_some())
        }),
    )
    .await;
    if !matches!(resolves, Ok(Ok(true))) {
        return c.warn(format!("{host} (from {from}) does not resolve here"), fix);
    }
    let hint = if configured.is_some() {
        ""
    } else {
        "; if your laptop knows the login node by another name, set [slurm] login_host"
    };
    c.ok(format!(
        "{host} (from {from}): the ssh line will be `ssh -N -L PORT:NODE:PORT {}@{host}`{hint}",
        user_name()
    ))
}

// --- backends the job launches -----------------------------------------------------

pub(crate) async fn backend_checks(l: &Loaded, binary: Option<&Path>) -> Vec<Check> {
    let slurm = &l.config.slurm;
    let prepared = !slurm.modules.is_empty() || !slurm.setup.is_empty();
    let llmgw = binary.map_or_else(|| "llmgw".to_string(), |b| b.display().to_string());
    let mut checks = Vec::new();
    for (i, m) in l.config.models.iter().enumerate() {
        let Some(launch) = &m.launch else { continue };
        let name = m.name.get_ref();
        let c = check(format!("backend:models[{i}]"), format!("backend {name}"));
        let argv = match llmgw_cluster::supervise::command_line(name, launch, 0, &llmgw) {
            Ok(argv) => argv,
            Err(e) => {
                checks.push(c.fail(e.to_string(), "complete the model's launch table"));
                continue;
            }
        };
        let program = argv[0].as_str();
        let check = if launch.command.is_some() {
            command_check(c, program, &llmgw, prepared)
        } else {
            sglang_check(c, launch.model_path.as_deref(), prepared).await
        };
        checks.push(check);
    }
    checks
}

/// A `launch.command`: its program must be findable.
pub(crate) fn command_check(c: Named, program: &str, llmgw: &str, prepared: bool) -> Check {
    if program == llmgw {
        return c.ok("runs this llmgw binary (launch.command)");
    }
    match which(program) {
        Some(p) => c.ok(format!("{program} found at {}", p.display())),
        None if prepared => c.skip(format!(
            "{program} is not on PATH here; will be checked in the job, after [slurm] modules/setup"
        )),
        None => c.fail(
            format!("{program} (launch.command) not found on PATH"),
            "install it, give its full path in launch.command, or add the [slurm] modules/setup lines that provide it",
        ),
    }
}

/// SGLang launched with `python -m sglang.launch_server`: python must find sglang.
pub(crate) async fn sglang_check(c: Named, model_path: Option<&str>, prepared: bool) -> Check {
    let fix = "install SGLang for the python the job runs (pip install \"sglang[all]\"), or add [slurm] setup = [\"source ~/venvs/sglang/bin/activate\"] (or modules) that provide it";
    if prepared {
        return c.skip("python and sglang will be checked in the job, after [slurm] modules/setup");
    }
    let Some(python) = which("python") else {
        return c.fail(
            "python not found on PATH (the job runs `python -m sglang.launch_server`)",
            fix,
        );
    };
    let py = python.display().to_string();
    let found = match bounded(&py, &["-c", FIND_SGLANG], PYTHON_TIMEOUT).await {
        Ok(out) if out.status.success() => first_line(&out.stdout),
        Ok(out) if out.status.code() == Some(3) => {
            return c.fail(format!("{py} has no sglang"), fix)
        }
        Ok(out) => {
            return c.fail(format!("{py} failed: {}", first_line(&out.stderr)), fix);
        }
        Err(e) => return c.fail(e, fix),
    };
    if let Some(p) = model_path.filter(|p| p.starts_with('/') || p.starts_with("~/")) {
        let path = config::expand_home(p);
        if !path.exists() {
            return c.warn(
                format!("{py} finds {found}, but model_path {p} does not exist here"),
                "check launch.model_path: a directory the compute nodes see, or a Hugging Face model id",
            );
        }
    }
    c.ok(format!("{py} finds {found}"))
}

pub(crate) async fn redis_check(l: &Loaded) -> Option<Check> {
    let value = l.config.cache.redis_url.as_ref()?;
    let c = check("redis", "Redis");
    let Ok(url) = l.resolve(value) else {
        return Some(c.skip("not checked: its redis_url reference is not resolved (see above)"));
    };
    let at = l.at(value);
    // Only host:port is shown: the URL may carry a password.
    let Ok(addr) = redis::Client::open(url.expose())
        .map(|client| client.get_connection_info().addr().to_string())
    else {
        return Some(c.fail(
            format!("[cache] redis_url at {at} is not a Redis URL"),
            "write it as redis://[:password@]host:6379[/db]",
        ));
    };
    let fix = format!(
        "start Redis on {addr} where the compute nodes reach it, or change [cache] redis_url at {at} (without it each gateway keeps its own cache and cooldowns)"
    );
    Some(
        match llmgw_gateway::cache::redis::RedisStore::connect(url.expose(), REDIS_TIMEOUT).await {
            Ok(store) if store.is_up() => c.ok(format!("{addr} answers PING")),
            Ok(_) => c.fail(
                format!(
                    "{addr} did not answer (connect + PING, {} ms)",
                    REDIS_TIMEOUT.as_millis() * 4
                ),
                fix,
            ),
            Err(e) => c.fail(e.to_string(), fix),
        },
    )
}
