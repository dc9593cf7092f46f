//! An admitted request's [`Ticket`]: what it holds ([`super::enforce`]'s claims) until
//! the answer is known, then the charge at every level (key, team, user, end user) and
//! its spend row.

use super::end_users::EndUserEntry;
use super::enforce::{Caller, Claims, Estimate};
use super::ratelimit::Rate;
use crate::spend::{Spend, SpendRow, Usage};
use llmgw_core::error::ApiError;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// An admitted request: holds its parallel slots and, once the response is known,
/// charges its cost and records its spend row ([`Ticket::finish`]). Dropped unfinished
/// (the client went away before an answer), it records a row with status 499.
#[derive(Debug)]
pub struct Ticket {
    claims: Claims,
    spend: Arc<Spend>,
    model: String,
    request_id: String,
    start: Instant,
    done: bool,
    /// Prompt tokens, estimated from the body's size (about four bytes a token), for a
    /// stream abandoned before the upstream reported its usage.
    prompt_estimate: u64,
    /// The end user the request named (its spend row's `end_user`).
    end_user: String,
    /// Keeps the writer waiting at shutdown until this request's row is recorded.
    _open: crate::spend::OpenTicket,
    /// The rpm/tpm limits and what is left of them, for the answer's headers.
    pub rate: Rate,
}

/// How a request ended, for its spend row.
#[derive(Debug, Default, Clone)]
pub struct Outcome {
    pub deployment: String,
    pub usage: Usage,
    pub status: u16,
    pub cache_hit: bool,
    /// A stream the client left before its end: charged for what was delivered, with the
    /// prompt estimated when the upstream's count never came.
    pub abandoned: bool,
    /// A stream's time to its first chunk (for the time per output token).
    pub ttft: Option<Duration>,
}

impl Ticket {
    /// Admits `caller`'s request for `model`, or refuses it with the error to answer.
    /// `end_user` names the request's end user; `tracked` is its entry when the key
    /// limits end users (the fourth level checked).
    pub fn admit(
        caller: &Caller,
        model: &str,
        body_len: usize,
        est: Estimate,
        end_user: Option<&str>,
        tracked: Option<Arc<EndUserEntry>>,
        spend: Arc<Spend>,
    ) -> Result<Ticket, ApiError> {
        let (claims, rate) = match caller {
            Caller::Master => (Claims::none(), Rate::default()),
            Caller::Key(k) => k.admit(model, est, tracked, llmgw_router::now_ms())?,
        };
        Ok(Ticket {
            claims,
            _open: spend.open_ticket(),
            spend,
            model: model.to_string(),
            request_id: crate::spend::request_id(),
            start: Instant::now(),
            done: false,
            rate,
            prompt_estimate: (body_len / 4) as u64,
            end_user: end_user.map(str::to_string).unwrap_or_default(),
        })
    }

    /// Time since admission.
    pub fn elapsed(&self) -> Duration {
        self.start.elapsed()
    }

    /// The id of the request's spend row (also sent as `x-llmgw-request-id`).
    pub fn request_id(&self) -> &str {
        &self.request_id
    }

    /// Charges the request and records its spend row; returns its cost in nano-dollars.
    pub fn finish(mut self, outcome: Outcome) -> i64 {
        self.record(outcome)
    }

    fn record(&mut self, mut o: Outcome) -> i64 {
        if self.done {
            return 0;
        }
        self.done = true;
        let now_ms = llmgw_router::now_ms();
        if o.abandoned && o.usage.prompt == 0 && o.usage.completion > 0 {
            o.usage.prompt = self.prompt_estimate;
        }
        // Whatever carried usage is charged: a whole answer, and a stream that broke off
        // or was abandoned after some of it was generated. Errors carry none.
        let cost = if o.cache_hit {
            0
        } else {
            self.spend.cost(&o.deployment, o.usage)
        };
        let took = self.start.elapsed();
        if let Some(h) = self.spend.histograms().filter(|_| o.usage.total() > 0) {
            // After the first token, the rest took (duration − ttft) over n − 1 tokens.
            let per_token = o.ttft.and_then(|t| {
                let n = u32::try_from(o.usage.completion.checked_sub(1)?).ok()?;
                took.checked_sub(t)?.checked_div(n)
            });
            h.answered_by(&self.model, &o.deployment).tokens(
                o.status,
                o.usage.prompt,
                o.usage.completion,
                per_token,
            );
        }
        let minute = now_ms / 60_000;
        let now_s = now_ms / 1000;
        let key = self.claims.key.as_ref();
        if let Some(k) = key {
            for (who, c) in k.levels(self.claims.end_user.as_deref()) {
                let (_, start, _) = who.limits().period(now_s);
                c.charge(start, minute, o.usage, cost);
            }
        }
        self.spend.record(SpendRow {
            request_id: std::mem::take(&mut self.request_id),
            ts_ms: now_ms as i64,
            key_id: key.map(|k| k.rec.id.clone()).unwrap_or_default(),
            team_id: key.and_then(|k| k.rec.team_id.clone()).unwrap_or_default(),
            user_id: key.and_then(|k| k.rec.user_id.clone()).unwrap_or_default(),
            end_user: std::mem::take(&mut self.end_user),
            model_group: std::mem::take(&mut self.model),
            deployment: o.deployment,
            prompt_tokens: o.usage.prompt as i64,
            completion_tokens: o.usage.completion as i64,
            cost_nanos: cost,
            latency_ms: took.as_millis() as i64,
            status: i32::from(o.status),
            cache_hit: o.cache_hit,
        });
        cost
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        if !self.done {
            self.record(Outcome {
                status: 499,
                ..Outcome::default()
            });
        }
    }
}
