//! Alerts without storms (`[[alerts]]`): the process's [`llmgw_core::alert::AlertSink`].
//!
//! Raising an alert (from anywhere: `watch.rs`'s conditions, the cluster's supervisor)
//! is a `try_send` into a bounded channel; one dispatcher task decides per target what
//! to send (`Dedup`: an alert's key is its event and subject; a repeat within the
//! target's `repeat_after` is counted, not sent; `resolved` follows recovery of an alert
//! the receiver was told about), and one delivery task per target posts, with retries and
//! capped backoff (`deliver.rs`). Nothing here is on the request path, and a slow or dead
//! webhook never holds anything but its own bounded queue.

mod deliver;
pub mod watch;

pub use deliver::send_test;

use deliver::Message;
use llmgw_core::alert::{Alert, AlertSink, Event};
use llmgw_core::config::{AlertConfig, LoadedConfig, Secret};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// Alerts waiting for the dispatcher.
const QUEUE: usize = 1024;
/// Messages waiting for one target's delivery.
const TARGET_QUEUE: usize = 256;
/// Most alert keys remembered per target (beyond: new keys are sent without counting).
const MAX_KEYS: usize = 10_000;
/// How often the dispatcher looks for a counted repeat whose `repeat_after` has passed.
const TICK: Duration = Duration::from_secs(1);

/// Messages delivered, given up on after every try, and alerts dropped on a full queue
/// (`/metrics`).
pub static SENT: AtomicU64 = AtomicU64::new(0);
pub static FAILED: AtomicU64 = AtomicU64::new(0);
pub static DROPPED: AtomicU64 = AtomicU64::new(0);

/// `llmgw_alerts_total{outcome="sent|failed|dropped"}` in Prometheus text.
pub fn metrics_text() -> String {
    let mut out = String::from(
        "# HELP llmgw_alerts_total Alert messages sent to [[alerts]] URLs, given up on after every retry (failed), or dropped on a full queue\n# TYPE llmgw_alerts_total counter\n",
    );
    for (outcome, n) in [("sent", &SENT), ("failed", &FAILED), ("dropped", &DROPPED)] {
        out.push_str(&format!(
            "llmgw_alerts_total{{outcome=\"{outcome}\"}} {}\n",
            n.load(Ordering::Relaxed)
        ));
    }
    out
}

/// The installed sink: the dispatcher's queue.
pub struct Alerts {
    tx: mpsc::Sender<Alert>,
}

impl AlertSink for Alerts {
    fn send(&self, alert: Alert) {
        if self.tx.try_send(alert).is_err() {
            DROPPED.fetch_add(1, Ordering::Relaxed);
        }
    }
}

impl Alerts {
    /// Starts the dispatcher and one delivery task per `[[alerts]]` entry, and installs
    /// the sink for the whole process. None without entries.
    pub fn start(cfg: &LoadedConfig, shutdown: CancellationToken) -> Option<Arc<Alerts>> {
        if cfg.config.alerts.is_empty() {
            return None;
        }
        let client = match deliver::client() {
            Ok(c) => c,
            Err(e) => {
                tracing::error!(error = %e, "alerts are off");
                return None;
            }
        };
        let targets: Vec<Target> = cfg
            .config
            .alerts
            .iter()
            .zip(&cfg.alert_urls)
            .enumerate()
            .map(|(i, (a, url))| Target::spawn(i, a, url.clone(), client.clone(), &shutdown))
            .collect();
        let (tx, rx) = mpsc::channel(QUEUE);
        tokio::spawn(dispatch(rx, targets, shutdown));
        let alerts = Arc::new(Alerts { tx });
        llmgw_core::alert::install(alerts.clone());
        Some(alerts)
    }
}

/// One `[[alerts]]` entry as the dispatcher sees it.
struct Target {
    events: Vec<Event>,
    dedup: Dedup,
    tx: mpsc::Sender<Message>,
    index: usize,
}

impl Target {
    fn spawn(
        index: usize,
        a: &AlertConfig,
        url: Secret,
        client: reqwest::Client,
        shutdown: &CancellationToken,
    ) -> Target {
        let (tx, rx) = mpsc::channel(TARGET_QUEUE);
        tokio::spawn(deliver::run(
            index,
            a.kind,
            url,
            client,
            rx,
            shutdown.clone(),
        ));
        Target {
            events: a.events.clone(),
            dedup: Dedup::new(a.repeat_after.0),
            tx,
            index,
        }
    }

    fn post(&self, alert: &Alert, firing: bool, repeats: u64) {
        let m = Message {
            event: alert.event,
            subject: alert.subject.clone(),
            message: alert.message.clone(),
            firing,
            repeats,
        };
        if self.tx.try_send(m).is_err() {
            DROPPED.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(
                target = self.index,
                event = alert.event.as_str(),
                "alert not delivered: the [[alerts]] entry's queue is full"
            );
        }
    }
}

async fn dispatch(
    mut rx: mpsc::Receiver<Alert>,
    mut targets: Vec<Target>,
    stop: CancellationToken,
) {
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            got = rx.recv() => {
                let Some(alert) = got else { return };
                let now = Instant::now();
                for t in targets.iter_mut().filter(|t| t.events.contains(&alert.event)) {
                    if let Some((firing, repeats)) = t.dedup.decide(&alert, now) {
                        t.post(&alert, firing, repeats);
                    }
                }
            }
            _ = tick.tick() => {
                let now = Instant::now();
                for t in &mut targets {
                    for (alert, repeats) in t.dedup.due(now) {
                        t.post(&alert, true, repeats);
                    }
                }
            }
        }
    }
}

/// What one target remembers of one alert key.
#[derive(Debug)]
struct KeyState {
    /// The condition holds (raised and not resolved since).
    firing: bool,
    /// The receiver was told it fires (and not told it resolved since).
    notified: bool,
    /// When a firing message was last sent.
    last_sent: Option<Instant>,
    /// Raises counted, not sent, since then.
    suppressed: u64,
    /// The last raise (what a delayed message says).
    last: Alert,
}

/// Per target: which alerts were sent when, and the repeats counted since.
#[derive(Debug)]
struct Dedup {
    repeat_after: Duration,
    keys: HashMap<(Event, String), KeyState>,
}

/// Events that happen rather than hold: no `resolved` follows them.
fn one_shot(e: Event) -> bool {
    matches!(e, Event::SoftBudget | Event::SpendRowsDropped)
}

impl Dedup {
    fn new(repeat_after: Duration) -> Self {
        Dedup {
            repeat_after,
            keys: HashMap::new(),
        }
    }

    /// What to send for `a` now: `Some((firing, repeats))`, or None (counted or
    /// nothing to say).
    fn decide(&mut self, a: &Alert, now: Instant) -> Option<(bool, u64)> {
        self.prune(now);
        let key = (a.event, a.subject.clone());
        let after = self.repeat_after;
        let recent = |s: &KeyState| {
            s.last_sent
                .is_some_and(|t| now.saturating_duration_since(t) < after)
        };
        if !a.firing {
            let s = self.keys.get_mut(&key)?;
            if !s.firing {
                return None;
            }
            s.firing = false;
            if !s.notified {
                return None;
            }
            s.notified = false;
            let repeats = std::mem::take(&mut s.suppressed);
            return Some((false, repeats));
        }
        if !self.keys.contains_key(&key) && self.keys.len() >= MAX_KEYS {
            return Some((true, 0));
        }
        let s = self.keys.entry(key).or_insert_with(|| KeyState {
            firing: false,
            notified: false,
            last_sent: None,
            suppressed: 0,
            last: a.clone(),
        });
        s.firing = !one_shot(a.event);
        s.last = a.clone();
        if recent(s) {
            s.suppressed += 1;
            return None;
        }
        s.last_sent = Some(now);
        s.notified = s.firing;
        Some((true, std::mem::take(&mut s.suppressed)))
    }

    /// Alerts still firing whose receiver was not told (a repeat counted after a
    /// `resolved`) once `repeat_after` has passed.
    fn due(&mut self, now: Instant) -> Vec<(Alert, u64)> {
        let mut out = Vec::new();
        for s in self.keys.values_mut() {
            let waited = s
                .last_sent
                .is_none_or(|t| now.saturating_duration_since(t) >= self.repeat_after);
            if s.firing && !s.notified && waited {
                s.notified = true;
                s.last_sent = Some(now);
                out.push((s.last.clone(), std::mem::take(&mut s.suppressed)));
            }
        }
        out
    }

    /// Forgets keys that are over and whose `repeat_after` has passed.
    fn prune(&mut self, now: Instant) {
        if self.keys.len() < MAX_KEYS / 2 {
            return;
        }
        let after = self.repeat_after;
        self.keys.retain(|_, s| {
            s.firing
                || s.last_sent
                    .is_some_and(|t| now.saturating_duration_since(t) < after)
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn alert(event: Event, subject: &str, firing: bool) -> Alert {
        Alert {
            event,
            subject: subject.into(),
            message: "m".into(),
            firing,
        }
    }

    #[test]
    fn repeats_within_repeat_after_are_counted_then_resolved_once() {
        let mut d = Dedup::new(Duration::from_secs(3600));
        let t = Instant::now();
        let down = alert(Event::StoreUnreachable, "redis", true);
        assert_eq!(d.decide(&down, t), Some((true, 0)));
        for _ in 0..100 {
            assert_eq!(d.decide(&down, t), None);
        }
        // Another subject is another key.
        assert_eq!(
            d.decide(&alert(Event::StoreUnreachable, "store", true), t),
            Some((true, 0))
        );
        let up = alert(Event::StoreUnreachable, "redis", false);
        assert_eq!(d.decide(&up, t), Some((false, 100)));
        assert_eq!(d.decide(&up, t), None);
        // A flap right after: counted; told once repeat_after has passed, if it holds.
        assert_eq!(d.decide(&down, t), None);
        assert!(d.due(t + Duration::from_secs(10)).is_empty());
        let due = d.due(t + Duration::from_secs(3601));
        assert_eq!(due.len(), 1);
        assert_eq!(due[0].1, 1);
        // After repeat_after a raise is a reminder with the count.
        assert_eq!(
            d.decide(&down, t + Duration::from_secs(7300)),
            Some((true, 0))
        );
    }

    #[test]
    fn one_shot_events_never_resolve() {
        let mut d = Dedup::new(Duration::from_secs(60));
        let t = Instant::now();
        let b = alert(Event::SoftBudget, "key a", true);
        assert_eq!(d.decide(&b, t), Some((true, 0)));
        assert_eq!(d.decide(&b, t), None);
        assert_eq!(d.decide(&alert(Event::SoftBudget, "key a", false), t), None);
        assert!(d.due(t + Duration::from_secs(120)).is_empty());
    }
}
