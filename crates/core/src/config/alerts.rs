//! `[[alerts]]`: where alerts go (a Slack-compatible incoming webhook or any URL that
//! takes JSON), which events, and how often a repeat may be sent again.

use super::Dur;
use crate::alert::Event;
use serde::Deserialize;
use std::time::Duration;
use toml::Spanned;

/// Longest `repeat_after` accepted.
pub const MAX_REPEAT_AFTER: Duration = Duration::from_secs(30 * 86_400);

/// How a message is shaped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AlertKind {
    /// `{"text": "…"}`: Slack, Mattermost, Rocket.Chat, Microsoft Teams' workflows.
    Slack,
    /// `{"event", "subject", "status", "message", "repeats", "gateway", "at"}`.
    #[default]
    Json,
}

/// One `[[alerts]]` entry.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AlertConfig {
    /// The webhook URL; may be `env:NAME` or `file:PATH` (it often holds a token). Never
    /// logged.
    pub url: Spanned<String>,
    #[serde(default)]
    pub kind: AlertKind,
    /// Which events go to this URL [default: all of them].
    #[serde(default = "all_events")]
    pub events: Vec<Event>,
    /// A repeat of an alert (same event and subject) within this time is counted, not
    /// sent [default: 1h].
    #[serde(default = "hour")]
    pub repeat_after: Dur,
}

fn all_events() -> Vec<Event> {
    Event::ALL.to_vec()
}

fn hour() -> Dur {
    Dur(Duration::from_secs(3600))
}

impl AlertConfig {
    /// What is wrong with the values, in a sentence (the URL is checked once resolved).
    pub fn check(&self) -> Result<(), String> {
        if self.events.is_empty() {
            return Err("events is empty: name at least one event, or leave it out for all".into());
        }
        if self.repeat_after.0 < Duration::from_secs(1) || self.repeat_after.0 > MAX_REPEAT_AFTER {
            return Err(format!(
                "repeat_after must be between 1s and 30d, got {}",
                self.repeat_after
            ));
        }
        Ok(())
    }
}

/// Whether a resolved alert URL can be posted to (the value itself is never shown).
pub fn url_ok(url: &str) -> bool {
    let rest = url
        .strip_prefix("https://")
        .or_else(|| url.strip_prefix("http://"));
    rest.is_some_and(|r| !r.is_empty() && !r.starts_with('/') && !r.contains(char::is_whitespace))
}

#[cfg(test)]
mod tests {
    use crate::config::Config;

    #[test]
    fn alerts_parse_with_defaults_and_refuse_with_a_line() {
        std::env::set_var("LLMGW_TEST_ALERTS_URL", "https://hooks.example/T/abc");
        let ok = "[[alerts]]\nurl = \"env:LLMGW_TEST_ALERTS_URL\"\n\n[[alerts]]\nurl = \"http://127.0.0.1:9/x\"\nkind = \"slack\"\nevents = [\"soft_budget\", \"store_unreachable\"]\nrepeat_after = \"10m\"\n";
        let c = Config::load_str(ok, "a.toml").unwrap();
        assert_eq!(c.config.alerts.len(), 2);
        assert_eq!(c.config.alerts[0].events.len(), 7);
        assert_eq!(c.config.alerts[0].kind, super::AlertKind::Json);
        assert_eq!(c.config.alerts[0].repeat_after.0.as_secs(), 3600);
        assert_eq!(c.alert_urls[0].expose(), "https://hooks.example/T/abc");
        assert_eq!(c.config.alerts[1].kind, super::AlertKind::Slack);
        for (text, line, what) in [
            (
                "[[alerts]]\nurl = \"http://x\"\nevents = [\"nope\"]\n",
                3,
                "nope",
            ),
            (
                "[[alerts]]\nurl = \"http://x\"\nkind = \"teams\"\n",
                3,
                "teams",
            ),
            (
                "\n[[alerts]]\nurl = \"ftp://secret-token\"\n",
                3,
                "http:// or https://",
            ),
            (
                "[[alerts]]\nurl = \"http://x\"\nrepeat_after = \"0s\"\n",
                2,
                "repeat_after",
            ),
            ("[[alerts]]\nurl = \"http://x\"\nevents = []\n", 2, "events"),
            ("[[alerts]]\nurl = \"http://x\"\nbogus = 1\n", 3, "bogus"),
        ] {
            let e = Config::load_str(text, "a.toml").unwrap_err().to_string();
            assert!(e.starts_with(&format!("a.toml:{line}:")), "{text}: {e}");
            assert!(e.contains(what), "{text}: {e}");
            assert!(!e.contains("secret-token"), "{e}");
        }
    }
}
