//! Holding requests at the gateway while a group's local backends are full, and serving
//! them in fair shares and by priority (`[router] fairness`, `[router] queue`).
//!
//! A backend such as SGLang serves what it is sent first come, first served: a flood of
//! one key's requests in its queue stalls everyone behind it. So for each model group with
//! local deployments the gateway keeps about as many requests in flight as those backends
//! can run at once ([`Gate`]: the sum of each one's `max_parallel`, or of the limit learned
//! from its load readings, see `load.rs`) and holds the rest here, where it decides who
//! goes next:
//!
//! - **Priority first.** A higher class is always served first (`interactive` 200,
//!   `default` 100, `batch` 10, or any number 0–255). **Aging** bounds starvation: a
//!   waiting request counts one class (100) higher for every `queue.aging` it has waited,
//!   so a batch request waits at most about 2 × `aging` behind a steady interactive flood.
//! - **Fair shares within a class**, by start-time fair queueing weighted by tokens: each
//!   request costs its prompt estimate plus its completion budget (`max_tokens`, else 256),
//!   divided by its flow's weight; the waiter with the smallest start tag goes next. A flow
//!   with long prompts gets no more GPU than one with short ones; a flow that was idle
//!   starts at the current virtual time, so it cannot save up credit.
//! - **Bounded.** At most `queue.max` waiters per group (beyond: 429 with how many are
//!   ahead), each for at most `queue.max_wait` (then 429 with Retry-After); a client that
//!   hangs up leaves the queue at once (its waiter is removed when its future is dropped).
//!
//! Cost when nothing waits: one atomic load and one compare-and-swap per request; the
//! queue's lock is taken only by requests that wait and by releases while some wait.

use super::deployment::Deployment;
use llmgw_wire::request::Flow;
use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// Completion budget of a request that sets no `max_tokens`.
pub const DEFAULT_COMPLETION: u64 = 256;
/// Upper bound of a request's cost in tokens (a huge `max_tokens` must not overflow tags).
const MAX_COST: u64 = 1 << 32;
/// Wait-time histogram buckets (seconds), as `/metrics` renders them.
pub const WAIT_BUCKETS: [f64; 11] = [0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 60.0, 300.0];

/// The queue's bounds and aging (`[router] queue`).
#[derive(Debug, Clone, Copy)]
pub struct QueueLimits {
    pub max: usize,
    pub max_wait: Duration,
    pub aging: Duration,
}

/// Why a request was not let through.
#[derive(Debug, Clone, PartialEq)]
pub enum Refusal {
    /// The queue already holds `ahead` waiters (`queue.max`).
    Full { ahead: usize },
    /// It waited `queue.max_wait` (or until the request's own deadline).
    TimedOut { waited: Duration, ahead: usize },
}

/// One model group's gate in front of its local deployments.
pub struct Gate {
    group: String,
    /// The group's local deployments: their limits add up to the capacity.
    local: Vec<Arc<Deployment>>,
    limits: QueueLimits,
    /// Requests let through to the local deployments and not finished.
    out: AtomicU64,
    /// Waiters in the queue (what the fast path reads).
    waiting: AtomicU64,
    queue: Mutex<Sched>,
    stats: GateStats,
}

/// Counters of one gate, for `/metrics` and `/health`.
#[derive(Default)]
pub struct GateStats {
    /// Requests that waited and were let through.
    pub served_after_wait: AtomicU64,
    pub rejected_full: AtomicU64,
    pub timed_out: AtomicU64,
    /// Waits of the requests let through after waiting, by [`WAIT_BUCKETS`] (+Inf last).
    pub wait_buckets: [AtomicU64; WAIT_BUCKETS.len() + 1],
    pub wait_sum_us: AtomicU64,
    /// Per flow: requests let through after waiting (the share each got under contention).
    pub served_by_flow: Mutex<HashMap<Arc<str>, u64>>,
}

/// A place among the requests in flight to a group's local deployments; given back when
/// dropped (with the deployment's slot: for a stream, when it ends).
pub struct Permit {
    gate: Option<Arc<Gate>>,
}

impl Drop for Permit {
    fn drop(&mut self) {
        if let Some(g) = self.gate.take() {
            g.out.fetch_sub(1, Ordering::AcqRel);
            if g.waiting.load(Ordering::Acquire) > 0 {
                g.pump();
            }
        }
    }
}

impl std::fmt::Debug for Permit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Permit")
    }
}

/// What a gate looks like now, for `/health` and `/metrics`.
#[derive(Debug, Clone, PartialEq)]
pub struct GateView {
    pub group: String,
    pub waiting: u64,
    pub in_flight: u64,
    /// `None` while no local deployment's limit is known yet (nothing is held).
    pub capacity: Option<u64>,
}

impl Gate {
    pub fn new(group: &str, local: Vec<Arc<Deployment>>, limits: QueueLimits) -> Gate {
        Gate {
            group: group.to_string(),
            local,
            limits,
            out: AtomicU64::new(0),
            waiting: AtomicU64::new(0),
            queue: Mutex::new(Sched::default()),
            stats: GateStats::default(),
        }
    }

    pub fn group(&self) -> &str {
        &self.group
    }

    pub fn stats(&self) -> &GateStats {
        &self.stats
    }

    pub fn view(&self) -> GateView {
        let cap = self.capacity();
        GateView {
            group: self.group.clone(),
            waiting: self.waiting.load(Ordering::Relaxed),
            in_flight: self.out.load(Ordering::Relaxed),
            capacity: (cap != u64::MAX).then_some(cap),
        }
    }

    /// The local deployments' mean latency (µs; 0 before any sample).
    pub fn latency_us(&self) -> u64 {
        let samples: Vec<u64> = self
            .local
            .iter()
            .map(|d| d.latency_us())
            .filter(|&l| l > 0)
            .collect();
        match samples.len() {
            0 => 0,
            n => samples.iter().sum::<u64>() / n as u64,
        }
    }

    /// Requests the local deployments can run at once: the sum of their limits (those
    /// available); unlimited while any available one's limit is unknown.
    fn capacity(&self) -> u64 {
        let mut sum = 0u64;
        for d in &self.local {
            if !d.available.load(Ordering::Relaxed) {
                continue;
            }
            match d.load.limit() {
                0 => return u64::MAX,
                n => sum = sum.saturating_add(n),
            }
        }
        sum
    }

    /// Counts one more request out if there is room.
    fn try_take(&self, cap: u64) -> bool {
        self.out
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < cap).then_some(n + 1)
            })
            .is_ok()
    }

    fn permit(self: &Arc<Self>) -> Permit {
        Permit {
            gate: Some(self.clone()),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Sched> {
        self.queue.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A permit at once when nobody waits and there is room; `None` means a request would
    /// have to wait (or go elsewhere).
    pub fn try_now(self: &Arc<Self>) -> Option<Permit> {
        if self.waiting.load(Ordering::Acquire) == 0 && self.try_take(self.capacity()) {
            return Some(self.permit());
        }
        None
    }

    /// Waits in the queue for a permit, until `deadline` or `queue.max_wait`. `cost` is
    /// the request's tokens (prompt estimate plus completion budget).
    pub async fn acquire(
        self: &Arc<Self>,
        flow: &Flow,
        cost: u64,
        deadline: Instant,
    ) -> Result<(Permit, Duration), Refusal> {
        let since = Instant::now();
        let (id, rx) = {
            let mut q = self.lock();
            if q.len == 0 && self.try_take(self.capacity()) {
                return Ok((self.permit(), Duration::ZERO));
            }
            if q.len >= self.limits.max {
                self.stats.rejected_full.fetch_add(1, Ordering::Relaxed);
                return Err(Refusal::Full { ahead: q.len });
            }
            let (tx, rx) = tokio::sync::oneshot::channel();
            let id = q.push(flow, cost.min(MAX_COST), since, tx);
            self.waiting.fetch_add(1, Ordering::AcqRel);
            (id, rx)
        };
        // Capacity may have freed up between the fast path and the lock.
        self.pump();
        let mut guard = Waiting {
            gate: self,
            id,
            done: false,
        };
        let until = deadline.min(llmgw_core::duration::deadline(since, self.limits.max_wait));
        let granted = tokio::time::timeout_at(tokio::time::Instant::from_std(until), rx).await;
        guard.done = true;
        match granted {
            Ok(Ok(permit)) => {
                let waited = since.elapsed();
                self.note_served(flow, waited);
                Ok((permit, waited))
            }
            // Timed out (or the sender vanished, which only a bug could do).
            _ => {
                let ahead = self.lock().remove(id).map_or(0, |_| {
                    self.waiting.fetch_sub(1, Ordering::AcqRel);
                    self.waiting.load(Ordering::Relaxed) as usize
                });
                self.stats.timed_out.fetch_add(1, Ordering::Relaxed);
                Err(Refusal::TimedOut {
                    waited: since.elapsed(),
                    ahead,
                })
            }
        }
    }

    fn note_served(&self, flow: &Flow, waited: Duration) {
        let s = &self.stats;
        s.served_after_wait.fetch_add(1, Ordering::Relaxed);
        let secs = waited.as_secs_f64();
        let b = WAIT_BUCKETS
            .iter()
            .position(|&le| secs <= le)
            .unwrap_or(WAIT_BUCKETS.len());
        s.wait_buckets[b].fetch_add(1, Ordering::Relaxed);
        s.wait_sum_us.fetch_add(
            u64::try_from(waited.as_micros()).unwrap_or(u64::MAX),
            Ordering::Relaxed,
        );
        let mut by = s.served_by_flow.lock().unwrap_or_else(|e| e.into_inner());
        // Bounded: flows are keys, teams or users, which the operator creates.
        if by.len() < 10_000 || by.contains_key(&flow.id) {
            *by.entry(flow.id.clone()).or_insert(0) += 1;
        }
    }

    /// Lets waiters through while there is room: after a release, a new waiter, or a
    /// change of capacity (the load poller calls it).
    pub fn pump(self: &Arc<Self>) {
        loop {
            let tx = {
                let mut q = self.lock();
                if q.len == 0 || !self.try_take(self.capacity()) {
                    return;
                }
                let Some(w) = q.pop(Instant::now(), self.limits.aging) else {
                    self.out.fetch_sub(1, Ordering::AcqRel);
                    return;
                };
                self.waiting.fetch_sub(1, Ordering::AcqRel);
                w
            };
            // Sent without the lock held: a permit that comes back (its waiter left in
            // the meantime) is given back by its own drop, which pumps again.
            if let Err(mut permit) = tx.send(self.permit()) {
                permit.gate = None;
                self.out.fetch_sub(1, Ordering::AcqRel);
            }
        }
    }
}

/// A waiter's place; removed from the queue if the request goes away while waiting.
struct Waiting<'a> {
    gate: &'a Arc<Gate>,
    id: u64,
    done: bool,
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        if self.gate.lock().remove(self.id).is_some() {
            self.gate.waiting.fetch_sub(1, Ordering::AcqRel);
        }
    }
}

type Grant = tokio::sync::oneshot::Sender<Permit>;

struct Waiter {
    priority: u8,
    tag: u64,
    since: Instant,
    tx: Grant,
}

/// The queue: per priority class, start-time fair queueing over flows.
#[derive(Default)]
struct Sched {
    waiters: HashMap<u64, Waiter>,
    levels: std::collections::BTreeMap<u8, Level>,
    len: usize,
    next_id: u64,
}

#[derive(Default)]
struct Level {
    /// (start tag, id): the next to serve first.
    by_tag: BTreeSet<(u64, u64)>,
    /// Ids in arrival order: the oldest first (for aging).
    by_age: BTreeSet<u64>,
    /// Virtual time: the start tag last served.
    now: u64,
    /// Each flow's last finish tag.
    finish: HashMap<Arc<str>, u64>,
}

impl Sched {
    fn push(&mut self, flow: &Flow, cost: u64, since: Instant, tx: Grant) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        let level = self.levels.entry(flow.priority).or_default();
        let last = level.finish.get(&flow.id).copied().unwrap_or(0);
        let start = last.max(level.now);
        let weight = u64::from(
            flow.weight
                .clamp(1, llmgw_wire::request::priority::MAX_WEIGHT),
        );
        let finish = start.saturating_add(cost.saturating_mul(1000) / weight);
        level.finish.insert(flow.id.clone(), finish);
        level.by_tag.insert((start, id));
        level.by_age.insert(id);
        self.waiters.insert(
            id,
            Waiter {
                priority: flow.priority,
                tag: start,
                since,
                tx,
            },
        );
        self.len += 1;
        id
    }

    fn remove(&mut self, id: u64) -> Option<Waiter> {
        let w = self.waiters.remove(&id)?;
        self.len -= 1;
        if let Some(level) = self.levels.get_mut(&w.priority) {
            level.by_tag.remove(&(w.tag, id));
            level.by_age.remove(&id);
            if level.by_tag.is_empty() {
                // Nobody waits at this class: its flows start afresh next time.
                self.levels.remove(&w.priority);
            }
        }
        Some(w)
    }

    /// The next waiter: the class with the highest priority after aging, then the
    /// smallest start tag in it.
    fn pop(&mut self, now: Instant, aging: Duration) -> Option<Grant> {
        let aging_ms = u64::try_from(aging.as_millis()).unwrap_or(u64::MAX).max(1);
        let mut best: Option<(u64, u8)> = None;
        for (&p, level) in &self.levels {
            let Some(oldest) = level.by_age.first().and_then(|id| self.waiters.get(id)) else {
                continue;
            };
            let waited = u64::try_from(now.saturating_duration_since(oldest.since).as_millis())
                .unwrap_or(u64::MAX);
            let effective = u64::from(p).saturating_add((waited / aging_ms).saturating_mul(100));
            // Ties go to the higher class (later in the map).
            if best.is_none_or(|(e, _)| effective >= e) {
                best = Some((effective, p));
            }
        }
        let (_, p) = best?;
        let level = self.levels.get_mut(&p)?;
        let &(tag, id) = level.by_tag.first()?;
        level.now = level.now.max(tag);
        self.remove(id).map(|w| w.tx)
    }
}

/// The completion budget a request sets (`max_tokens`, `max_completion_tokens`,
/// `max_output_tokens`), found without parsing the body; only requests that wait pay it.
pub fn completion_budget(body: &[u8]) -> u64 {
    for key in [
        &b"\"max_tokens\""[..],
        b"\"max_completion_tokens\"",
        b"\"max_output_tokens\"",
    ] {
        if let Some(at) = memchr::memmem::find(body, key) {
            let rest = body[at + key.len()..].trim_ascii_start();
            let Some(rest) = rest.strip_prefix(b":") else {
                continue;
            };
            let digits: Vec<u8> = rest
                .trim_ascii_start()
                .iter()
                .take_while(|b| b.is_ascii_digit())
                .take(12)
                .copied()
                .collect();
            if let Some(n) = std::str::from_utf8(&digits)
                .ok()
                .and_then(|s| s.parse::<u64>().ok())
            {
                return n.min(MAX_COST);
            }
        }
    }
    DEFAULT_COMPLETION
}

#[cfg(test)]
mod tests {
    use super::*;
    use llmgw_core::config::ProviderKind;

    fn flow(id: &str, weight: u32, priority: u8) -> Flow {
        Flow {
            id: Arc::from(id),
            weight,
            priority,
        }
    }

    /// A gate over one local deployment that runs `limit` at once.
    fn gate(limit: u64, max: usize) -> Arc<Gate> {
        let mut d = Deployment::standalone(ProviderKind::Sglang, "m", "http://127.0.0.1:9/v1");
        d.load = crate::load::LoadState::new(true);
        d.load.set_limit(limit);
        Arc::new(Gate::new(
            "g",
            vec![Arc::new(d)],
            QueueLimits {
                max,
                max_wait: Duration::from_secs(60),
                aging: Duration::from_secs(60),
            },
        ))
    }

    fn far() -> Instant {
        Instant::now() + Duration::from_secs(60)
    }

    #[test]
    fn completion_budgets() {
        assert_eq!(completion_budget(br#"{"max_tokens": 77,"x":1}"#), 77);
        assert_eq!(completion_budget(br#"{"max_completion_tokens":5}"#), 5);
        assert_eq!(completion_budget(br#"{"messages":[]}"#), DEFAULT_COMPLETION);
        assert_eq!(
            completion_budget(br#"{"max_tokens":"x"}"#),
            DEFAULT_COMPLETION
        );
        assert_eq!(
            completion_budget(br#"{"max_tokens":99999999999999999999}"#),
            MAX_COST
        );
    }

    #[tokio::test]
    async fn nothing_waits_while_there_is_room() {
        let g = gate(2, 10);
        let a = g.try_now().expect("room");
        let _b = g.try_now().expect("room");
        assert!(g.try_now().is_none(), "full at 2");
        drop(a);
        assert!(g.try_now().is_some(), "room again");
    }

    /// Requests waiting behind a full gate, all queued before anything is released.
    async fn queued(
        g: &Arc<Gate>,
        flows: &[Flow],
        cost: u64,
    ) -> Vec<tokio::task::JoinHandle<String>> {
        let mut out = Vec::new();
        for f in flows {
            let (g2, f) = (g.clone(), f.clone());
            out.push(tokio::spawn(async move {
                let (p, _) = g2.acquire(&f, cost, far()).await.expect("granted");
                drop(p);
                f.id.to_string()
            }));
            // Queued in this order: wait until it is in.
            let n = out.len() as u64;
            while g.waiting.load(Ordering::Acquire) < n {
                tokio::task::yield_now().await;
            }
        }
        out
    }

    /// The order in which waiters are let through one at a time.
    fn order_of(g: &Arc<Gate>, n: usize) -> Vec<u64> {
        let mut q = g.lock();
        let mut ids: Vec<u64> = Vec::new();
        let mut pending: Vec<(u64, u8, u64)> = q
            .waiters
            .iter()
            .map(|(id, w)| (*id, w.priority, w.tag))
            .collect();
        pending.sort();
        for _ in 0..n {
            let before: std::collections::HashSet<u64> = q.waiters.keys().copied().collect();
            let _ = q.pop(Instant::now(), Duration::from_secs(60));
            let after: std::collections::HashSet<u64> = q.waiters.keys().copied().collect();
            ids.extend(before.difference(&after));
        }
        ids
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_flood_does_not_starve_another_flow() {
        let g = gate(1, 100);
        let hold = g.try_now().expect("room");
        // Key A queues 10, then key B queues 1: B goes second, not eleventh.
        let mut flows: Vec<Flow> = (0..10).map(|_| flow("a", 1, 100)).collect();
        flows.push(flow("b", 1, 100));
        let _tasks = queued(&g, &flows, 100).await;
        let order = order_of(&g, 11);
        assert_eq!(order.iter().position(|&id| id == 10), Some(1), "{order:?}");
        drop(hold);
    }

    #[tokio::test(flavor = "current_thread")]
    async fn equal_weights_alternate_and_weights_share() {
        let g = gate(1, 100);
        let _hold = g.try_now().expect("room");
        let mut flows = Vec::new();
        for _ in 0..6 {
            flows.push(flow("a", 1, 100));
        }
        for _ in 0..6 {
            flows.push(flow("b", 2, 100));
        }
        let _tasks = queued(&g, &flows, 100).await;
        let order = order_of(&g, 6);
        // Of the first six served, weight 2 gets about two thirds.
        let b = order.iter().filter(|&&id| id >= 6).count();
        assert_eq!(b, 4, "{order:?}");
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_higher_class_goes_first_and_long_prompts_cost_more() {
        let g = gate(1, 100);
        let _hold = g.try_now().expect("room");
        let flows = vec![
            flow("batch", 1, llmgw_wire::request::priority::BATCH),
            flow("batch", 1, llmgw_wire::request::priority::BATCH),
            flow("chat", 1, llmgw_wire::request::priority::INTERACTIVE),
        ];
        let _tasks = queued(&g, &flows, 100).await;
        assert_eq!(order_of(&g, 1), vec![2], "interactive first");
        // Within a class, a flow with costly requests gets fewer of them through.
        let g = gate(1, 100);
        let _hold = g.try_now().expect("room");
        let mut tasks = Vec::new();
        for (id, cost) in [
            ("long", 4000),
            ("long", 4000),
            ("short", 1000),
            ("short", 1000),
            ("short", 1000),
        ] {
            let (g2, f) = (g.clone(), flow(id, 1, 100));
            tasks.push(tokio::spawn(async move {
                g2.acquire(&f, cost, far()).await.map(|_| ())
            }));
            let n = tasks.len() as u64;
            while g.waiting.load(Ordering::Acquire) < n {
                tokio::task::yield_now().await;
            }
        }
        let order = order_of(&g, 4);
        let shorts = order.iter().filter(|&&id| id >= 2).count();
        assert!(shorts >= 3, "{order:?}");
    }

    #[test]
    fn aging_lifts_a_starved_class() {
        let mut q = Sched::default();
        let now = Instant::now();
        let long_ago = now.checked_sub(Duration::from_secs(180)).unwrap();
        let (tx, _rx1) = tokio::sync::oneshot::channel();
        let old_batch = q.push(&flow("batch", 1, 10), 100, long_ago, tx);
        let (tx, _rx2) = tokio::sync::oneshot::channel();
        let fresh_chat = q.push(&flow("chat", 1, 200), 100, now, tx);
        // The batch request has waited three agings: 10 + 300 > 200 + 0.
        let _ = q.pop(now, Duration::from_secs(60));
        assert!(
            !q.waiters.contains_key(&old_batch),
            "the aged batch request went first"
        );
        assert!(q.waiters.contains_key(&fresh_chat));
        // Without that much waiting, the higher class goes first.
        let mut q = Sched::default();
        let (tx, _rx3) = tokio::sync::oneshot::channel();
        let batch = q.push(&flow("batch", 1, 10), 100, now, tx);
        let (tx, _rx4) = tokio::sync::oneshot::channel();
        let chat = q.push(&flow("chat", 1, 200), 100, now, tx);
        let _ = q.pop(now, Duration::from_secs(60));
        assert!(!q.waiters.contains_key(&chat) && q.waiters.contains_key(&batch));
    }

    #[tokio::test(flavor = "current_thread")]
    async fn bounded_and_left_at_once() {
        let g = gate(1, 2);
        let hold = g.try_now().expect("room");
        let f = flow("a", 1, 100);
        let (g1, f1) = (g.clone(), f.clone());
        let first = tokio::spawn(async move { g1.acquire(&f1, 1, far()).await.map(|_| ()) });
        let (g2, f2) = (g.clone(), f.clone());
        let second = tokio::spawn(async move { g2.acquire(&f2, 1, far()).await.map(|_| ()) });
        while g.waiting.load(Ordering::Acquire) < 2 {
            tokio::task::yield_now().await;
        }
        // Full: the third is refused at once, saying how many are ahead.
        assert_eq!(
            g.acquire(&f, 1, far()).await.map(|_| ()),
            Err(Refusal::Full { ahead: 2 })
        );
        // A waiter that goes away leaves the queue at once.
        second.abort();
        let _ = second.await;
        assert_eq!(g.waiting.load(Ordering::Acquire), 1);
        assert_eq!(g.lock().len, 1);
        // A deadline ends the wait with how long it waited.
        let soon = Instant::now() + Duration::from_millis(20);
        match g.acquire(&f, 1, soon).await {
            Err(Refusal::TimedOut { .. }) => {}
            other => panic!("{other:?}"),
        }
        // Releasing lets the remaining waiter through.
        drop(hold);
        first.await.unwrap().unwrap();
        assert_eq!(g.view().in_flight, 0);
        assert_eq!(g.view().waiting, 0);
    }
}
