//! A steady client load for the chain tests: `workers` tasks share `rate` requests per
//! second, alternating JSON and streaming chat completions, each on a pooled keep-alive
//! client (what real SDKs do). Every outcome is recorded: status, transport errors,
//! streams that did not end with `[DONE]`, latency, and which job served it if it was
//! forwarded.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// One request's outcome.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// Unix ms when it was sent.
    pub sent_ms: u64,
    pub latency: Duration,
    pub stream: bool,
    /// Empty when it succeeded (200, and a stream that ended with `[DONE]`).
    pub error: String,
    pub forwarded_to: Option<String>,
}

pub struct Load {
    stop: Arc<AtomicBool>,
    outcomes: Arc<Mutex<Vec<Outcome>>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl Load {
    /// Starts the load against `base` (`http://host:port/v1`) with the bearer `key`.
    pub fn start(base: &str, key: &str, model: &str, rate: f64, workers: usize) -> Load {
        Load::start_with(base, key, model, rate, workers, super::client())
    }

    /// Like [`Load::start`], each request on a new connection (no keep-alive pool): every
    /// request is a new connection through `connect`.
    pub fn start_fresh(base: &str, key: &str, model: &str, rate: f64, workers: usize) -> Load {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let client = reqwest::Client::builder()
            .no_proxy()
            .pool_max_idle_per_host(0)
            .timeout(Duration::from_secs(60))
            .build()
            .expect("build reqwest client");
        Load::start_with(base, key, model, rate, workers, client)
    }

    fn start_with(
        base: &str,
        key: &str,
        model: &str,
        rate: f64,
        workers: usize,
        client: reqwest::Client,
    ) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let outcomes = Arc::new(Mutex::new(Vec::new()));
        let interval = Duration::from_secs_f64(workers as f64 / rate);
        let tasks = (0..workers)
            .map(|w| {
                let (stop, outcomes, client) = (stop.clone(), outcomes.clone(), client.clone());
                let url = format!("{base}/chat/completions");
                let (key, model) = (key.to_string(), model.to_string());
                tokio::spawn(async move {
                    // Spread the workers over one interval.
                    tokio::time::sleep(interval.mul_f64(w as f64 / workers as f64)).await;
                    let mut n = w;
                    while !stop.load(Ordering::SeqCst) {
                        let started = Instant::now();
                        let stream = n % 2 == 1;
                        n += 1;
                        let o = one(&client, &url, &key, &model, stream).await;
                        outcomes.lock().unwrap().push(o);
                        if let Some(rest) = interval.checked_sub(started.elapsed()) {
                            tokio::time::sleep(rest).await;
                        }
                    }
                })
            })
            .collect();
        Load {
            stop,
            outcomes,
            tasks,
        }
    }

    /// Outcomes so far.
    pub fn snapshot(&self) -> Vec<Outcome> {
        self.outcomes.lock().unwrap().clone()
    }

    /// Waits (bounded: 60 s) until at least `n` requests have finished, whatever their
    /// outcome; returns how many have. A test that does something "under load" waits for
    /// the load to be under way first, and for it to go on afterwards, instead of sleeping.
    pub async fn wait_for_outcomes(&self, n: usize) -> usize {
        let outcomes = self.outcomes.clone();
        super::wait_for(
            Duration::from_secs(60),
            &format!("{n} requests of the load to finish"),
            move || {
                let have = outcomes.lock().unwrap().len();
                async move { (have >= n).then_some(have) }
            },
        )
        .await
    }

    /// Stops and waits for the requests in flight; every outcome.
    pub async fn finish(self) -> Vec<Outcome> {
        self.stop.store(true, Ordering::SeqCst);
        for t in self.tasks {
            let _ = t.await;
        }
        let out = self.outcomes.lock().unwrap().clone();
        out
    }
}

async fn one(client: &reqwest::Client, url: &str, key: &str, model: &str, stream: bool) -> Outcome {
    let sent_ms = unix_ms();
    let t0 = Instant::now();
    let mut o = Outcome {
        sent_ms,
        latency: Duration::ZERO,
        stream,
        error: String::new(),
        forwarded_to: None,
    };
    let resp = client
        .post(url)
        .bearer_auth(key)
        .header("content-type", "application/json")
        .body(super::chat_body(model, stream))
        .send()
        .await;
    match resp {
        Err(e) => o.error = format!("send: {e:?}"),
        Ok(r) => {
            let status = r.status();
            o.forwarded_to = r
                .headers()
                .get("x-llmgw-forwarded-to")
                .and_then(|v| v.to_str().ok())
                .map(str::to_string);
            match r.bytes().await {
                Err(e) => o.error = format!("body ({status}): {e:?}"),
                Ok(body) => {
                    let text = String::from_utf8_lossy(&body);
                    if status != 200 {
                        o.error = format!("{status}: {text}");
                    } else if stream && !text.trim_end().ends_with("data: [DONE]") {
                        o.error = format!("truncated stream: {text}");
                    } else if stream && text.contains("\"error\"") {
                        o.error = format!("error event: {text}");
                    }
                }
            }
        }
    }
    o.latency = t0.elapsed();
    o
}

/// Failed outcomes that were not in flight at `at_ms` (Unix ms): sent after it, or ended
/// before it (with 50 ms of slack for clocks read at slightly different points).
pub fn failed_outside(outcomes: &[Outcome], at_ms: u64) -> Vec<&Outcome> {
    failures(outcomes)
        .into_iter()
        .filter(|o| {
            o.sent_ms > at_ms + 50 || o.sent_ms + (o.latency.as_millis() as u64) + 50 < at_ms
        })
        .collect()
}

/// Failed outcomes, for assertion messages.
pub fn failures(outcomes: &[Outcome]) -> Vec<&Outcome> {
    outcomes.iter().filter(|o| !o.error.is_empty()).collect()
}

/// The `q`-quantile of the latencies (0 for none).
pub fn quantile(outcomes: &[&Outcome], q: f64) -> Duration {
    let mut l: Vec<Duration> = outcomes.iter().map(|o| o.latency).collect();
    if l.is_empty() {
        return Duration::ZERO;
    }
    l.sort();
    let i = ((l.len() as f64 * q).ceil() as usize).clamp(1, l.len()) - 1;
    l[i]
}
