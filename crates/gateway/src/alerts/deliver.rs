//! Posting alerts to one `[[alerts]]` URL: the message's shape (`slack`: `{"text": …}`;
//! `json`: the fields), retries with capped exponential backoff, and `llmgw alerts test`.
//! The URL is a secret (a webhook URL is its own token): it is never logged, and errors
//! name the entry by its position.

use llmgw_core::alert::Event;
use llmgw_core::config::{AlertKind, LoadedConfig, Secret};
use serde_json::json;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// Tries per message (the first and the retries).
const TRIES: u32 = 6;
/// The first retry's delay; doubled each time, capped at [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_millis(500);
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// One POST's time limit.
const POST_TIMEOUT: Duration = Duration::from_secs(10);

/// One message on its way to a target.
#[derive(Debug, Clone)]
pub(super) struct Message {
    pub event: Event,
    pub subject: String,
    pub message: String,
    pub firing: bool,
    /// Raises counted, not sent, since the last message about this alert.
    pub repeats: u64,
}

/// The HTTP client for webhooks (TLS through rustls; the environment's proxy is used:
/// a compute node often reaches Slack only through one).
pub(super) fn client() -> Result<reqwest::Client, String> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::builder()
        .timeout(POST_TIMEOUT)
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .map_err(|e| format!("cannot build the HTTP client for alerts: {e}"))
}

/// The body for `kind`.
fn body(kind: AlertKind, m: &Message) -> serde_json::Value {
    let host = llmgw_core::host::node_hostname();
    let status = if m.firing { "firing" } else { "resolved" };
    match kind {
        AlertKind::Json => json!({
            "event": m.event.as_str(),
            "subject": m.subject,
            "status": status,
            "message": m.message,
            "repeats": m.repeats,
            "gateway": host,
            "at": llmgw_core::state::rfc3339(now_s()),
        }),
        AlertKind::Slack => {
            let mark = if m.firing {
                ":rotating_light:"
            } else {
                ":white_check_mark:"
            };
            let head = if m.firing { "" } else { "RESOLVED: " };
            let repeats = match m.repeats {
                0 => String::new(),
                1 => " (1 repeat since the last message)".into(),
                n => format!(" ({n} repeats since the last message)"),
            };
            json!({
                "text": format!(
                    "{mark} llmgw on {host}: {head}{} — {}: {}{repeats}",
                    m.event.title(),
                    m.subject,
                    m.message
                )
            })
        }
    }
}

fn now_s() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Posts `m` once: Ok, or why not and whether trying again may help.
async fn post_once(
    client: &reqwest::Client,
    url: &Secret,
    kind: AlertKind,
    m: &Message,
) -> Result<(), (String, bool)> {
    let resp = client
        .post(url.expose())
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .body(body(kind, m).to_string())
        .send()
        .await
        // reqwest's error can carry the URL: say only what kind of failure it was.
        .map_err(|e| {
            let what = if e.is_timeout() {
                "timed out"
            } else if e.is_connect() {
                "could not connect"
            } else {
                "request failed"
            };
            (what.to_string(), true)
        })?;
    let status = resp.status();
    if status.is_success() {
        return Ok(());
    }
    let retry = status.is_server_error() || status.as_u16() == 429 || status.as_u16() == 408;
    Err((format!("answered {status}"), retry))
}

/// Posts `m` with retries and backoff; the last error when every try failed.
async fn post(
    client: &reqwest::Client,
    url: &Secret,
    kind: AlertKind,
    m: &Message,
    tries: u32,
    stop: &CancellationToken,
) -> Result<(), String> {
    let mut backoff = FIRST_BACKOFF;
    let mut last = String::new();
    for n in 0..tries {
        match post_once(client, url, kind, m).await {
            Ok(()) => return Ok(()),
            Err((why, retry)) => {
                last = why;
                if !retry || n + 1 == tries {
                    break;
                }
            }
        }
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
    Err(last)
}

/// One target's delivery task: messages in order, each with its retries.
pub(super) async fn run(
    index: usize,
    kind: AlertKind,
    url: Secret,
    client: reqwest::Client,
    mut rx: mpsc::Receiver<Message>,
    stop: CancellationToken,
) {
    loop {
        let m = tokio::select! {
            _ = stop.cancelled() => return,
            m = rx.recv() => match m { Some(m) => m, None => return },
        };
        let outcome = post(&client, &url, kind, &m, TRIES, &stop).await;
        let counter = if outcome.is_ok() {
            &super::SENT
        } else {
            &super::FAILED
        };
        counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        match outcome {
            Ok(()) => tracing::info!(
                alert = m.event.as_str(),
                subject = %llmgw_core::logging::Clean(&m.subject),
                firing = m.firing,
                repeats = m.repeats,
                "alert sent to [[alerts]] entry {}",
                index + 1
            ),
            Err(why) => tracing::warn!(
                alert = m.event.as_str(),
                error = %why,
                "alert not delivered to [[alerts]] entry {} after {TRIES} tries",
                index + 1
            ),
        }
    }
}

/// `llmgw alerts test`: one message of each event an entry takes, to every entry, with
/// a few retries. Per message: (entry number from 1, event, outcome).
pub async fn send_test(cfg: &LoadedConfig) -> Vec<(usize, Event, Result<(), String>)> {
    let stop = CancellationToken::new();
    let mut out = Vec::new();
    let client = match client() {
        Ok(c) => c,
        Err(e) => {
            for (i, a) in cfg.config.alerts.iter().enumerate() {
                out.extend(a.events.iter().map(|&ev| (i + 1, ev, Err(e.clone()))));
            }
            return out;
        }
    };
    for (i, (a, url)) in cfg.config.alerts.iter().zip(&cfg.alert_urls).enumerate() {
        for &event in &a.events {
            let m = Message {
                event,
                subject: "test".into(),
                message: format!(
                    "a test of the {} alert from `llmgw alerts test`; nothing is wrong",
                    event.as_str()
                ),
                firing: true,
                repeats: 0,
            };
            out.push((i + 1, event, post(&client, url, a.kind, &m, 3, &stop).await));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slack_gets_text_and_json_gets_fields() {
        let m = Message {
            event: Event::StoreUnreachable,
            subject: "redis".into(),
            message: "Redis unreachable".into(),
            firing: false,
            repeats: 3,
        };
        let s = body(AlertKind::Slack, &m);
        let text = s["text"].as_str().unwrap();
        assert!(
            text.contains("RESOLVED: store unreachable — redis"),
            "{text}"
        );
        assert!(text.contains("3 repeats"), "{text}");
        assert_eq!(s.as_object().unwrap().len(), 1);
        let j = body(AlertKind::Json, &m);
        assert_eq!(j["event"], "store_unreachable");
        assert_eq!(j["status"], "resolved");
        assert_eq!(j["repeats"], 3);
    }
}
