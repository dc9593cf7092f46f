//! Alerts as every crate raises them: an [`Event`], a subject (which deployment, key,
//! backend…) and a message, handed to the process's [`AlertSink`].
//!
//! Raising is cheap and never waits: the sink the gateway installs (`llmgw_gateway::
//! alerts`) queues the alert in a bounded channel and delivers it from a background task,
//! deduplicating by key (event + subject). Without a sink (no `[[alerts]]`, or a process
//! that is not a gateway) raising does nothing. Lower crates (the cluster's supervisor,
//! renewal) reach the sink through this module, so they need not know the gateway.

use serde::Deserialize;
use std::sync::{Arc, RwLock};

/// What an alert is about (`[[alerts]] events`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Event {
    /// A deployment down (unreachable, unavailable) or cooling down repeatedly.
    DeploymentDown,
    /// Every deployment of a model group unavailable.
    GroupUnavailable,
    /// A launched backend restarting repeatedly.
    BackendCrashLoop,
    /// A renewal that failed, or a successor still pending near the time limit.
    RenewalFailed,
    /// A key or team past its `soft_budget` in the current period.
    SoftBudget,
    /// The key/spend store or Redis unreachable.
    StoreUnreachable,
    /// Spend rows dropped (the store down longer than its buffer holds).
    SpendRowsDropped,
}

impl Event {
    pub const ALL: [Event; 7] = [
        Event::DeploymentDown,
        Event::GroupUnavailable,
        Event::BackendCrashLoop,
        Event::RenewalFailed,
        Event::SoftBudget,
        Event::StoreUnreachable,
        Event::SpendRowsDropped,
    ];

    /// The name in the config and in JSON payloads.
    pub fn as_str(self) -> &'static str {
        match self {
            Event::DeploymentDown => "deployment_down",
            Event::GroupUnavailable => "group_unavailable",
            Event::BackendCrashLoop => "backend_crash_loop",
            Event::RenewalFailed => "renewal_failed",
            Event::SoftBudget => "soft_budget",
            Event::StoreUnreachable => "store_unreachable",
            Event::SpendRowsDropped => "spend_rows_dropped",
        }
    }

    /// A short human title (Slack messages).
    pub fn title(self) -> &'static str {
        match self {
            Event::DeploymentDown => "deployment down",
            Event::GroupUnavailable => "model group unavailable",
            Event::BackendCrashLoop => "backend crash loop",
            Event::RenewalFailed => "renewal failed",
            Event::SoftBudget => "soft budget crossed",
            Event::StoreUnreachable => "store unreachable",
            Event::SpendRowsDropped => "spend rows dropped",
        }
    }
}

/// One raised or resolved alert.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Alert {
    pub event: Event,
    /// What it is about: a deployment id, a group, `key:<id>`, a backend, `redis`, …
    /// Together with the event it is the alert's key.
    pub subject: String,
    pub message: String,
    /// False when the condition is over (`resolved`).
    pub firing: bool,
}

/// Where raised alerts go.
pub trait AlertSink: Send + Sync {
    /// Takes the alert without waiting (a full queue drops it, counted).
    fn send(&self, alert: Alert);
}

static SINK: RwLock<Option<Arc<dyn AlertSink>>> = RwLock::new(None);

/// Makes `sink` the process's alert sink (replacing any earlier one).
pub fn install(sink: Arc<dyn AlertSink>) {
    if let Ok(mut s) = SINK.write() {
        *s = Some(sink);
    }
}

fn send(alert: Alert) {
    let sink = SINK.read().ok().and_then(|s| s.clone());
    if let Some(s) = sink {
        s.send(alert);
    }
}

/// Raises the alert `event` about `subject` (repeats are the sink's to count).
pub fn raise(event: Event, subject: impl Into<String>, message: impl Into<String>) {
    send(Alert {
        event,
        subject: subject.into(),
        message: message.into(),
        firing: true,
    });
}

/// Says the condition behind `event` about `subject` is over; the sink sends `resolved`
/// only for an alert it sent.
pub fn resolve(event: Event, subject: impl Into<String>, message: impl Into<String>) {
    send(Alert {
        event,
        subject: subject.into(),
        message: message.into(),
        firing: false,
    });
}
