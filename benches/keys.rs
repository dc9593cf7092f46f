//! What virtual keys add to a request's CPU time: authenticating the key (SHA-256 and one
//! table lookup), admitting the request (blocked/expiry/model/budget/tpm checks, the
//! parallel and rpm slots of the key and its team), and finishing it (cost from usage,
//! the counters, the spend row handed to the writer's channel). Issue 11 asks for ≤ 3 µs
//! for all of it.
//!
//!   cargo bench --bench keys              # full run
//!   cargo bench --bench keys -- --quick   # a few seconds
//!
//! The spend rows go to a real writer task and an in-memory SQLite store, as in the
//! gateway (on another thread, off the measured path).

// Test and benchmark code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
use criterion::{criterion_group, criterion_main, Criterion};
use llmgw::keys::enforce::{
    Caller, Counters, Estimate, KeyEntry, Outcome, Table, TeamEntry, Ticket,
};
use llmgw::keys::{hash_key, hex, KeyRecord, Limits, TeamRecord};
use llmgw::spend::{Spend, Usage};
use llmgw::store::{sqlite::SqliteStore, Store};
use std::collections::HashMap;
use std::hint::black_box;
use std::sync::Arc;

/// Bytes of the request body (`Ticket::admit` keeps a prompt estimate from it).
const BODY_LEN: usize = 1400;

/// The estimate held at admission (prompt plus 4096 output tokens at $0.5/$1.5 per Mtok).
const EST: Estimate = Estimate {
    tokens: 350 + 4096,
    cost: 350 * 500 + 4096 * 1500,
};

/// Every limit set, none reached: the most work a request can cause.
fn limits() -> Limits {
    Limits {
        models: vec!["local".into(), "gpt-*".into()],
        max_budget: Some(1e6),
        budget_duration: Some(30 * 86_400),
        budget_anchor: 0,
        rpm: Some(u64::from(u32::MAX)),
        tpm: Some(u64::from(u32::MAX)),
        max_parallel: Some(1_000_000),
        blocked: false,
        ..Limits::default()
    }
}

fn table(n: usize) -> (Table, Vec<String>) {
    let team = Arc::new(TeamEntry {
        rec: TeamRecord {
            id: "lab".into(),
            alias: Some("lab".into()),
            limits: limits(),
            metadata: serde_json::Value::Null,
            created_at: 0,
        },
        counters: Arc::new(Counters::default()),
    });
    let mut t = Table::default();
    let mut keys = Vec::new();
    for i in 0..n {
        let key = llmgw::keys::generate_key().expect("random key");
        let h = hash_key(&key);
        let e = Arc::new(KeyEntry {
            rec: KeyRecord {
                id: hex(&h[..8]),
                hash: hex(&h),
                hint: llmgw::keys::hint(&key),
                alias: Some(format!("user{i}")),
                user_id: None,
                team_id: Some("lab".into()),
                limits: limits(),
                end_user: None,
                expires_at: Some(u64::MAX / 2),
                metadata: serde_json::Value::Null,
                created_at: 0,
            },
            counters: Arc::new(Counters::default()),
            team: Some(team.clone()),
            user: None,
            end_users: Default::default(),
        });
        t.by_id.insert(e.rec.id.clone(), e.clone());
        t.by_hash.insert(h, e);
        keys.push(key);
    }
    t.teams.insert("lab".into(), team);
    (t, keys)
}

fn keys(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    let store = Arc::new(Store::Sqlite(SqliteStore::open(None).expect("sqlite")));
    let prices = HashMap::from([("local-1".to_string(), (0.5, 1.5))]);
    let (spend, _writer) = rt.block_on(async {
        Spend::start(
            prices,
            &["local".into()],
            store,
            10_000_000,
            tokio_util::sync::CancellationToken::new(),
        )
    });
    let (table, keys) = table(1000);
    let key = keys[500].clone();
    let usage = Usage {
        prompt: 350,
        completion: 120,
    };
    let _guard = rt.enter();
    let mut g = c.benchmark_group("keys");
    g.bench_function("authenticate (sha256 + lookup, 1000 keys)", |b| {
        b.iter(|| table.lookup(&hash_key(black_box(&key))).is_some())
    });
    let entry = table.lookup(&hash_key(&key)).expect("key").clone();
    let caller = Caller::Key(entry);
    g.bench_function("admit + finish (key and team, every limit)", |b| {
        b.iter(|| {
            let t = Ticket::admit(
                black_box(&caller),
                "local",
                BODY_LEN,
                EST,
                None,
                None,
                spend.clone(),
            )
            .expect("admitted");
            t.finish(Outcome {
                deployment: "local-1".into(),
                usage,
                status: 200,
                cache_hit: false,
                abandoned: false,
                ttft: None,
            });
        })
    });
    g.bench_function("whole: authenticate + admit + finish", |b| {
        b.iter(|| {
            let e = table.lookup(&hash_key(black_box(&key))).expect("key");
            let caller = Caller::Key(e.clone());
            let t = Ticket::admit(&caller, "local", BODY_LEN, EST, None, None, spend.clone())
                .expect("admitted");
            t.finish(Outcome {
                deployment: "local-1".into(),
                usage,
                status: 200,
                cache_hit: false,
                abandoned: false,
                ttft: None,
            });
        })
    });
    let body = br#"{"id":"chatcmpl-1","object":"chat.completion","created":1,"model":"m","choices":[{"index":0,"message":{"role":"assistant","content":"Hello there, how can I help you today?"},"finish_reason":"stop"}],"usage":{"prompt_tokens":350,"completion_tokens":120,"total_tokens":470}}"#;
    g.bench_function("usage_of (JSON answer)", |b| {
        b.iter(|| llmgw::spend::usage_of(black_box(body)))
    });
    g.finish();
}

criterion_group!(benches, keys);
criterion_main!(benches);
