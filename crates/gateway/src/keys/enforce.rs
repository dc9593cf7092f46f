//! The request path's view of keys: one lock-free table lookup and a few atomics per
//! request, never a database read and never a lock shared by all requests.
//!
//! - [`Table`]: key hash → [`KeyEntry`], built by the admin path and swapped whole
//!   (`ArcSwap`) on every change; a request loads it with one atomic read.
//! - [`Counters`] (one per key and per team, carried over when the table is rebuilt):
//!   in-flight requests, this minute's requests and tokens (packed `minute << 32 | n`
//!   words updated by compare-and-swap, so a new minute resets them exactly), this budget
//!   period's spend, lifetime totals for `/metrics`, and the deltas the Redis sync has not
//!   sent yet.
//! - [`KeyEntry::admit`] checks blocked, expiry, model, budget, tpm, then claims
//!   max_parallel and rpm slots (undone if the team refuses), and returns a [`Ticket`];
//!   [`Ticket::finish`] charges the request's cost and records its spend row.
//!
//! Windows are calendar minutes (as LiteLLM's limiter and the deployments' own rpm/tpm),
//! so every replica counts in the same window and Retry-After is the time to its end.

use super::ratelimit::Rate;
use super::{nanos_to_usd, KeyRecord, Limits, TeamRecord};
use crate::spend::{Spend, SpendRow, Usage};
use axum::http::StatusCode;
use llmgw_core::error::ApiError;
use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const LOW: u64 = 0xffff_ffff;

/// Live usage of one key or team.
#[derive(Debug, Default)]
pub struct Counters {
    pub in_flight: AtomicU64,
    /// `(minute << 32) | requests` this minute.
    minute_requests: AtomicU64,
    /// `(minute << 32) | tokens` this minute.
    minute_tokens: AtomicU64,
    /// Start (unix s) of the budget period `spend` belongs to.
    period: AtomicU64,
    /// Nano-dollars spent in `period` (with Redis: the larger of this replica's count and
    /// the total over replicas).
    spend: AtomicI64,
    /// Nano-dollars held by this replica's admitted requests that have not finished:
    /// their estimated cost, released when they are charged ([`Claims`]).
    reserved: AtomicI64,
    /// Not yet added to Redis by the sync task.
    pub(crate) unsent_requests: AtomicU64,
    pub(crate) unsent_tokens: AtomicU64,
    pub(crate) unsent_spend: AtomicI64,
    /// Since this process started, for `/metrics`.
    pub requests_total: AtomicU64,
    pub prompt_tokens_total: AtomicU64,
    pub completion_tokens_total: AtomicU64,
    pub spend_total: AtomicI64,
}

fn packed_count(word: u64, minute: u64) -> u64 {
    if word >> 32 == minute & LOW {
        word & LOW
    } else {
        0
    }
}

/// Adds `n` to this minute's count (starting the minute over when it changed); with a
/// `limit`, only while the count is below it. Returns the new count, or `None` if refused.
fn packed_add(a: &AtomicU64, minute: u64, n: u64, limit: Option<u64>) -> Option<u64> {
    let mut cur = a.load(Ordering::Relaxed);
    loop {
        let count = packed_count(cur, minute);
        if limit.is_some_and(|l| count >= l) {
            return None;
        }
        let next_count = count.saturating_add(n).min(LOW);
        let next = ((minute & LOW) << 32) | next_count;
        match a.compare_exchange_weak(cur, next, Ordering::AcqRel, Ordering::Relaxed) {
            Ok(_) => return Some(next_count),
            Err(v) => cur = v,
        }
    }
}

/// Undoes a `packed_add` of 1 if the minute has not changed since.
fn packed_undo(a: &AtomicU64, minute: u64) {
    let mut cur = a.load(Ordering::Relaxed);
    while cur >> 32 == minute & LOW && cur & LOW > 0 {
        match a.compare_exchange_weak(cur, cur - 1, Ordering::AcqRel, Ordering::Relaxed) {
            Ok(_) => return,
            Err(v) => cur = v,
        }
    }
}

/// Takes back `n` of a reservation added in `minute` (nothing once the minute is over:
/// a new minute started from zero).
fn packed_sub(a: &AtomicU64, minute: u64, n: u64) {
    let mut cur = a.load(Ordering::Relaxed);
    while cur >> 32 == minute & LOW && cur & LOW > 0 {
        let next = (cur & !LOW) | (cur & LOW).saturating_sub(n);
        match a.compare_exchange_weak(cur, next, Ordering::AcqRel, Ordering::Relaxed) {
            Ok(_) => return,
            Err(v) => cur = v,
        }
    }
}

/// Raises this minute's count to at least `n` (what all replicas counted).
fn packed_max(a: &AtomicU64, minute: u64, n: u64) {
    let mut cur = a.load(Ordering::Relaxed);
    loop {
        if packed_count(cur, minute) >= n {
            return;
        }
        let next = ((minute & LOW) << 32) | n.min(LOW);
        match a.compare_exchange_weak(cur, next, Ordering::AcqRel, Ordering::Relaxed) {
            Ok(_) => return,
            Err(v) => cur = v,
        }
    }
}

impl Counters {
    /// Counters starting at `spend` nano-dollars in the period starting at `period`.
    pub fn with_spend(period: u64, spend: i64) -> Counters {
        let c = Counters::default();
        c.period.store(period, Ordering::Relaxed);
        c.spend.store(spend, Ordering::Relaxed);
        c
    }

    /// Moves to period `start` (spend 0) when it is newer than the current one.
    fn roll(&self, start: u64) {
        let cur = self.period.load(Ordering::Acquire);
        if start > cur
            && self
                .period
                .compare_exchange(cur, start, Ordering::AcqRel, Ordering::Relaxed)
                .is_ok()
        {
            self.spend.store(0, Ordering::Release);
        }
    }

    /// Nano-dollars spent in the period starting at `start`.
    pub fn spend_in(&self, start: u64) -> i64 {
        self.roll(start);
        if self.period.load(Ordering::Acquire) == start {
            self.spend.load(Ordering::Acquire)
        } else {
            0
        }
    }

    /// Starts over at period `start` with `spend` (a budget period that changed).
    pub fn reset_period(&self, start: u64, spend: i64) {
        self.period.store(start, Ordering::Release);
        self.spend.store(spend, Ordering::Release);
    }

    /// Holds `estimate` nano-dollars of the budget for an admitted request, while this
    /// period's spend plus what is already held is below `budget`; else returns what is
    /// spent and held. Lock-free: a compare-and-swap on `reserved` that reads `reserved`
    /// before `spend`, and settling adds to `spend` before it releases `reserved`, so a
    /// request settling meanwhile is counted twice (refusing, never admitting, wrongly).
    fn reserve(&self, start: u64, budget: i64, estimate: i64) -> Result<(), i64> {
        let mut held = self.reserved.load(Ordering::Acquire);
        loop {
            let committed = self.spend_in(start).saturating_add(held);
            if committed >= budget {
                return Err(committed);
            }
            match self.reserved.compare_exchange_weak(
                held,
                held.saturating_add(estimate),
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => return Ok(()),
                Err(v) => held = v,
            }
        }
    }

    /// Nano-dollars held by requests in flight.
    pub fn reserved(&self) -> i64 {
        self.reserved.load(Ordering::Acquire)
    }

    /// The period start `spend` currently belongs to.
    pub fn period(&self) -> u64 {
        self.period.load(Ordering::Acquire)
    }

    pub fn requests_this_minute(&self, minute: u64) -> u64 {
        packed_count(self.minute_requests.load(Ordering::Relaxed), minute)
    }

    pub fn tokens_this_minute(&self, minute: u64) -> u64 {
        packed_count(self.minute_tokens.load(Ordering::Relaxed), minute)
    }

    /// Adds a finished request's cost and tokens.
    fn charge(&self, period: u64, minute: u64, usage: Usage, cost: i64) {
        let tokens = usage.total();
        if tokens > 0 {
            packed_add(&self.minute_tokens, minute, tokens, None);
            self.unsent_tokens.fetch_add(tokens, Ordering::Relaxed);
        }
        if cost > 0 {
            self.roll(period);
            self.spend.fetch_add(cost, Ordering::AcqRel);
            self.unsent_spend.fetch_add(cost, Ordering::Relaxed);
            self.spend_total.fetch_add(cost, Ordering::Relaxed);
        }
        self.prompt_tokens_total
            .fetch_add(usage.prompt, Ordering::Relaxed);
        self.completion_tokens_total
            .fetch_add(usage.completion, Ordering::Relaxed);
    }

    /// Shared state: folds in the totals over all replicas.
    pub fn merge(&self, minute: u64, requests: u64, tokens: u64, period: u64, spend: i64) {
        packed_max(&self.minute_requests, minute, requests);
        packed_max(&self.minute_tokens, minute, tokens);
        self.roll(period);
        if self.period.load(Ordering::Acquire) == period {
            self.spend.fetch_max(spend, Ordering::AcqRel);
        }
    }
}

/// Hashes a key hash by its first 8 bytes (already uniformly random).
#[derive(Default)]
pub struct FirstBytes(u64);

impl Hasher for FirstBytes {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for (i, b) in bytes.iter().take(8).enumerate() {
            self.0 ^= u64::from(*b) << (8 * i);
        }
    }
}

type HashMap32 = HashMap<[u8; 32], Arc<KeyEntry>, BuildHasherDefault<FirstBytes>>;

/// One team in the table.
#[derive(Debug)]
pub struct TeamEntry {
    pub rec: TeamRecord,
    pub counters: Arc<Counters>,
}

/// One key in the table.
#[derive(Debug)]
pub struct KeyEntry {
    pub rec: KeyRecord,
    pub counters: Arc<Counters>,
    pub team: Option<Arc<TeamEntry>>,
}

/// Everything the request path knows about keys; replaced whole on every change.
#[derive(Debug, Default)]
pub struct Table {
    pub by_hash: HashMap32,
    pub by_id: HashMap<String, Arc<KeyEntry>>,
    pub teams: HashMap<String, Arc<TeamEntry>>,
}

impl Table {
    pub fn lookup(&self, hash: &[u8; 32]) -> Option<&Arc<KeyEntry>> {
        self.by_hash.get(hash)
    }
}

/// Who is calling.
#[derive(Debug, Clone)]
pub enum Caller {
    /// The master key (or no key on a keyless loopback gateway): no limits.
    Master,
    Key(Arc<KeyEntry>),
}

/// Why a request was refused, for `/metrics`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    Unknown,
    Blocked,
    Expired,
    Model,
    Budget,
    Rpm,
    Tpm,
    Parallel,
}

impl Reason {
    pub const ALL: [Reason; 8] = [
        Reason::Unknown,
        Reason::Blocked,
        Reason::Expired,
        Reason::Model,
        Reason::Budget,
        Reason::Rpm,
        Reason::Tpm,
        Reason::Parallel,
    ];
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Unknown => "unknown_key",
            Reason::Blocked => "blocked",
            Reason::Expired => "expired",
            Reason::Model => "model_not_allowed",
            Reason::Budget => "budget_exceeded",
            Reason::Rpm => "rpm",
            Reason::Tpm => "tpm",
            Reason::Parallel => "max_parallel",
        }
    }
}

static REJECTIONS: [AtomicU64; 8] = [const { AtomicU64::new(0) }; 8];

/// Counts a refusal.
pub fn reject(reason: Reason) {
    REJECTIONS[reason as usize].fetch_add(1, Ordering::Relaxed);
}

/// Refusals so far, by reason.
pub fn rejections() -> impl Iterator<Item = (Reason, u64)> {
    Reason::ALL
        .into_iter()
        .map(|r| (r, REJECTIONS[r as usize].load(Ordering::Relaxed)))
}

/// Whose limit refused a request, for messages.
#[derive(Clone, Copy)]
enum Who<'a> {
    Key(&'a KeyRecord),
    Team(&'a TeamRecord),
}

impl Who<'_> {
    fn name(&self) -> String {
        match self {
            Who::Key(k) => format!("API key {:?}", k.name()),
            Who::Team(t) => format!("team {:?}", t.name()),
        }
    }
    fn update_hint(&self, flag: &str) -> String {
        match self {
            Who::Key(k) => format!("llmgw keys update {} {flag}", k.name()),
            Who::Team(t) => format!("POST /team/update {{\"team_id\": {:?}, ...}}", t.id),
        }
    }
    fn limits(&self) -> &Limits {
        match self {
            Who::Key(k) => &k.limits,
            Who::Team(t) => &t.limits,
        }
    }
}

fn limited(reason: Reason, message: String, retry_after: u64) -> ApiError {
    reject(reason);
    ApiError::new(StatusCode::TOO_MANY_REQUESTS, "rate_limit_error", message)
        .with_code("rate_limit_exceeded")
        .with_retry_after(retry_after.max(1))
}

/// The refusal for a key that is blocked, expired or belongs to a blocked team.
pub fn unusable(entry: &KeyEntry, now_s: u64) -> Option<ApiError> {
    let rec = &entry.rec;
    if rec.limits.blocked {
        reject(Reason::Blocked);
        return Some(
            ApiError::unauthorized(format!(
                "API key {:?} has been revoked; ask the gateway's administrator for a new key",
                rec.name()
            ))
            .with_code("key_revoked"),
        );
    }
    if let Some(exp) = rec.expires_at.filter(|&e| e <= now_s) {
        reject(Reason::Expired);
        return Some(
            ApiError::unauthorized(format!(
                "API key {:?} expired at {}; ask the gateway's administrator to extend it (llmgw keys update {} --expires 30d) or for a new key",
                rec.name(),
                llmgw_core::state::rfc3339(exp),
                rec.name()
            ))
            .with_code("key_expired"),
        );
    }
    if let Some(team) = entry.team.as_ref().filter(|t| t.rec.limits.blocked) {
        reject(Reason::Blocked);
        return Some(
            ApiError::unauthorized(format!(
                "API key {:?} belongs to team {:?}, which has been blocked; ask the gateway's administrator",
                rec.name(),
                team.rec.name()
            ))
            .with_code("team_blocked"),
        );
    }
    None
}

/// What an admitted request holds, per level (key, team): its parallel slots, the
/// estimated cost held against budgets and the estimated tokens held against tpm in
/// `minute`. All released when dropped, which [`Ticket`] does after it charged the
/// actual cost (so spend and reservation never both miss a request).
#[derive(Debug)]
struct Claims {
    key: Option<Arc<KeyEntry>>,
    parallel: [bool; 2],
    held_spend: [i64; 2],
    held_tokens: [u64; 2],
    minute: u64,
}

impl Claims {
    fn none() -> Claims {
        Claims {
            key: None,
            parallel: [false; 2],
            held_spend: [0; 2],
            held_tokens: [0; 2],
            minute: 0,
        }
    }
}

impl Drop for Claims {
    fn drop(&mut self) {
        let Some(k) = &self.key else { return };
        for i in 0..2 {
            let Some(c) = k.counters_at(i) else { continue };
            if self.parallel[i] {
                c.in_flight.fetch_sub(1, Ordering::AcqRel);
            }
            if self.held_spend[i] != 0 {
                c.reserved.fetch_sub(self.held_spend[i], Ordering::AcqRel);
            }
            if self.held_tokens[i] != 0 {
                packed_sub(&c.minute_tokens, self.minute, self.held_tokens[i]);
            }
        }
    }
}

/// What an admitted request is expected to cost, held until it is charged: its prompt
/// estimate plus its `max_tokens` (or the configured default) of output, priced at the
/// requested group's dearest deployment.
#[derive(Debug, Clone, Copy, Default)]
pub struct Estimate {
    pub tokens: u64,
    pub cost: i64,
}

impl llmgw_wire::request::GroupAccess for KeyEntry {
    /// The key's and its team's allowed models: what every fallback group is checked
    /// against (finding 3 of issue 21: fallbacks used to leave a key's models).
    fn allows_group(&self, group: &str) -> bool {
        self.rec.limits.allows(group)
            && self
                .team
                .as_ref()
                .is_none_or(|t| t.rec.limits.allows(group))
    }
}

impl KeyEntry {
    /// The counters of level `i`: 0 the key, 1 its team.
    fn counters_at(&self, i: usize) -> Option<&Counters> {
        match i {
            0 => Some(&self.counters),
            1 => self.team.as_ref().map(|t| &*t.counters),
            _ => None,
        }
    }

    /// Whether any level has a budget (only then is a request's cost estimated).
    pub fn has_budget(&self) -> bool {
        self.rec.limits.max_budget.is_some()
            || self
                .team
                .as_ref()
                .is_some_and(|t| t.rec.limits.max_budget.is_some())
    }

    /// Checks every limit of the key and its team for a request to `model`, holds its
    /// estimate against budgets and tpm, and claims its parallel and rpm slots. `now_ms`
    /// is unix ms.
    fn admit(
        self: &Arc<Self>,
        model: &str,
        est: Estimate,
        now_ms: u64,
    ) -> Result<(Claims, Rate), ApiError> {
        let now_s = now_ms / 1000;
        if let Some(e) = unusable(self, now_s) {
            return Err(e);
        }
        let key = Who::Key(&self.rec);
        let team = self.team.as_ref().map(|t| (Who::Team(&t.rec), &t.counters));
        let both = std::iter::once((key, &self.counters)).chain(team);
        for (who, _) in both.clone() {
            if !who.limits().allows(model) {
                reject(Reason::Model);
                return Err(ApiError::new(
                    StatusCode::FORBIDDEN,
                    "permission_error",
                    format!(
                        "{} may not use model {model:?}; allowed model groups: {}. Use one of those, or ask the gateway's administrator to allow it ({})",
                        who.name(),
                        who.limits().models.join(", "),
                        who.update_hint("--models ...")
                    ),
                )
                .with_code("model_not_allowed")
                .with_param("model"));
            }
        }
        let minute = now_ms / 60_000;
        let to_next_minute = 60 - now_s % 60;
        let mut claims = Claims {
            key: Some(self.clone()),
            minute,
            ..Claims::none()
        };
        let mut rate = Rate {
            reset_s: to_next_minute,
            ..Rate::default()
        };
        for (i, (who, c)) in both.clone().enumerate() {
            let l = who.limits();
            if let Some(budget) = l.budget_nanos() {
                let (_, start, end) = l.period(now_s);
                if let Err(spent) = c.reserve(start, budget, est.cost) {
                    reject(Reason::Budget);
                    let (when, retry) = match end {
                        Some(end) => (
                            format!(
                                "the budget resets at {} (in {} s)",
                                llmgw_core::state::rfc3339(end),
                                end.saturating_sub(now_s)
                            ),
                            Some(end.saturating_sub(now_s).max(1)),
                        ),
                        None => (
                            "the budget does not reset (no budget_duration)".into(),
                            None,
                        ),
                    };
                    let mut e = ApiError::new(
                        StatusCode::TOO_MANY_REQUESTS,
                        "budget_exceeded",
                        format!(
                            "{} has spent ${:.6} of its ${:.6} budget (counting the estimated cost of its requests in flight); {when}. Wait for the reset, or ask the gateway's administrator to raise max_budget ({})",
                            who.name(),
                            nanos_to_usd(spent),
                            nanos_to_usd(budget),
                            who.update_hint("--max-budget USD")
                        ),
                    )
                    .with_code("budget_exceeded");
                    e.retry_after = retry;
                    return Err(e);
                }
                claims.held_spend[i] = est.cost;
            }
            if let Some(tpm) = l.tpm {
                let Some(used) = packed_add(&c.minute_tokens, minute, est.tokens, Some(tpm)) else {
                    return Err(limited(
                        Reason::Tpm,
                        format!(
                            "{} has used its {tpm} tokens per minute (tpm), counting the estimate of its requests in flight; retry in {to_next_minute} s, or ask the gateway's administrator to raise tpm ({})",
                            who.name(),
                            who.update_hint("--tpm N")
                        ),
                        to_next_minute,
                    ));
                };
                rate.tokens(tpm, used);
                claims.held_tokens[i] = est.tokens;
            }
        }
        for (i, (who, c)) in both.clone().enumerate() {
            if let Some(max) = who.limits().max_parallel {
                let n = c.in_flight.fetch_add(1, Ordering::AcqRel) + 1;
                claims.parallel[i] = true;
                if n > max {
                    return Err(limited(
                        Reason::Parallel,
                        format!(
                            "{} already has {max} requests in flight (max_parallel); retry when one finishes, or ask the gateway's administrator to raise it ({})",
                            who.name(),
                            who.update_hint("--max-parallel N")
                        ),
                        1,
                    ));
                }
            }
        }
        let mut counted: Vec<&Counters> = Vec::with_capacity(2);
        for (who, c) in both {
            let limit = who.limits().rpm;
            let Some(used) = packed_add(&c.minute_requests, minute, 1, limit) else {
                for c in counted {
                    packed_undo(&c.minute_requests, minute);
                    c.unsent_requests.fetch_sub(1, Ordering::Relaxed);
                    c.requests_total.fetch_sub(1, Ordering::Relaxed);
                }
                return Err(limited(
                    Reason::Rpm,
                    format!(
                        "{} has reached its limit of {} requests per minute (rpm); retry in {to_next_minute} s, or ask the gateway's administrator to raise rpm ({})",
                        who.name(),
                        limit.unwrap_or(0),
                        who.update_hint("--rpm N")
                    ),
                    to_next_minute,
                ));
            };
            if let Some(l) = limit {
                rate.requests(l, used);
            }
            c.unsent_requests.fetch_add(1, Ordering::Relaxed);
            c.requests_total.fetch_add(1, Ordering::Relaxed);
            counted.push(c);
        }
        Ok((claims, rate))
    }
}

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
    pub fn admit(
        caller: &Caller,
        model: &str,
        body_len: usize,
        est: Estimate,
        spend: Arc<Spend>,
    ) -> Result<Ticket, ApiError> {
        let (claims, rate) = match caller {
            Caller::Master => (Claims::none(), Rate::default()),
            Caller::Key(k) => k.admit(model, est, llmgw_router::now_ms())?,
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
            let (_, start, _) = k.rec.limits.period(now_s);
            k.counters.charge(start, minute, o.usage, cost);
            if let Some(t) = &k.team {
                let (_, start, _) = t.rec.limits.period(now_s);
                t.counters.charge(start, minute, o.usage, cost);
            }
        }
        self.spend.record(SpendRow {
            request_id: std::mem::take(&mut self.request_id),
            ts_ms: now_ms as i64,
            key_id: key.map(|k| k.rec.id.clone()).unwrap_or_default(),
            team_id: key.and_then(|k| k.rec.team_id.clone()).unwrap_or_default(),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packed_minute_counters() {
        let a = AtomicU64::new(0);
        assert_eq!(packed_add(&a, 100, 1, Some(2)), Some(1));
        assert_eq!(packed_add(&a, 100, 1, Some(2)), Some(2));
        assert_eq!(packed_add(&a, 100, 1, Some(2)), None);
        packed_undo(&a, 100);
        assert_eq!(packed_count(a.load(Ordering::Relaxed), 100), 1);
        // A new minute starts over.
        assert_eq!(packed_add(&a, 101, 1, Some(2)), Some(1));
        assert_eq!(packed_count(a.load(Ordering::Relaxed), 100), 0);
        packed_max(&a, 101, 7);
        assert_eq!(packed_count(a.load(Ordering::Relaxed), 101), 7);
        packed_max(&a, 101, 3);
        assert_eq!(packed_count(a.load(Ordering::Relaxed), 101), 7);
    }

    // Reserve, then settle: threads racing for a budget that one estimate fills get
    // exactly one reservation; once it is settled (spend added, hold released) the next
    // one is judged on what was spent.
    #[test]
    fn racing_reservations_admit_one_while_the_budget_is_held() {
        let c = Arc::new(Counters::with_spend(0, 0));
        let admitted = AtomicU64::new(0);
        std::thread::scope(|s| {
            for _ in 0..8 {
                s.spawn(|| {
                    for _ in 0..1000 {
                        if c.reserve(0, 100, 150).is_ok() {
                            admitted.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                });
            }
        });
        assert_eq!(admitted.load(Ordering::Relaxed), 1);
        assert_eq!(c.reserved(), 150);
        // Settled at 40: 60 left, so one more is admitted.
        c.charge(0, 0, Usage::default(), 40);
        c.reserved.fetch_sub(150, Ordering::AcqRel);
        assert!(c.reserve(0, 100, 150).is_ok());
        assert_eq!(c.reserve(0, 100, 150), Err(40 + 150));
    }

    #[test]
    fn spend_rolls_with_the_period() {
        let c = Counters::with_spend(1000, 500);
        assert_eq!(c.spend_in(1000), 500);
        c.charge(
            1000,
            0,
            Usage {
                prompt: 1,
                completion: 1,
            },
            20,
        );
        assert_eq!(c.spend_in(1000), 520);
        assert_eq!(c.spend_in(1030), 0);
        c.merge(0, 0, 0, 1030, 70);
        assert_eq!(c.spend_in(1030), 70);
        // An older period never comes back.
        assert_eq!(c.spend_in(1000), 0);
    }
}
