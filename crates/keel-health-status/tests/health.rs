//! keel-health-status through its public API.

// Helpers outside #[test] functions unwrap too: a failed set-up is a failed test.
#![allow(clippy::unwrap_used)]

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use keel_core::Status::{self, Ko, Ok as Up, Warn};
use keel_health_status::{ComponentSpec, Health, Mandatory, MandatoryList, Mode, Report, Thresholds};

const TICK: Duration = Duration::from_secs(1);

fn spec(name: &str, thresholds: Thresholds) -> ComponentSpec {
    ComponentSpec::new(name).interval(TICK).timeout(Duration::from_millis(500)).thresholds(thresholds)
}

fn thresholds(fall_warn: u32, fall_ko: u32, rise_ko: u32, rise_warn: u32) -> Thresholds {
    Thresholds { fall_warn, fall_ko, rise_ko, rise_warn }
}

/// A check that replays `script` (then repeats its last entry) and counts calls.
fn scripted(script: &[Status]) -> (impl Fn() -> std::future::Ready<Report> + Send + Sync + 'static, Arc<AtomicU32>) {
    let queue = Arc::new(Mutex::new(script.iter().copied().collect::<VecDeque<_>>()));
    let calls = Arc::new(AtomicU32::new(0));
    let counter = calls.clone();
    let check = move || {
        counter.fetch_add(1, Ordering::SeqCst);
        let mut queue = queue.lock().unwrap();
        let status = if queue.len() > 1 { queue.pop_front().unwrap() } else { *queue.front().unwrap() };
        std::future::ready(match status {
            Up => Report::ok(),
            Warn => Report::warn("slow"),
            Ko => Report::fail("refused"),
        })
    };
    (check, calls)
}

fn component(health: &Health, name: &str) -> (Status, String) {
    let snapshot = health.snapshot();
    let view = &snapshot.components[name];
    (view.status, view.message.clone())
}

/// Statuses observed just after each of the next `n` checks (checks run at
/// 0, 1 s, 2 s, ...; we look half a tick later).
async fn observe(health: &Health, name: &str, n: usize) -> Vec<Status> {
    let mut seen = Vec::new();
    tokio::time::sleep(TICK / 2).await;
    for _ in 0..n {
        seen.push(component(health, name).0);
        tokio::time::sleep(TICK).await;
    }
    seen
}

fn ungrouped() -> Health {
    Health::new(MandatoryList::default(), Mode::Must)
}

#[tokio::test(start_paused = true)]
async fn starts_ko_pending_first_check() {
    let health = ungrouped();
    health.register(spec("db", Thresholds::default()), std::future::pending::<Report>).unwrap();
    assert_eq!(component(&health, "db"), (Ko, "pending first check".to_owned()));
    assert!(!health.is_cache_healthy());
}

#[tokio::test(start_paused = true)]
async fn rise_two_two_takes_two_successes_to_warn_and_two_more_to_ok() {
    let health = ungrouped();
    let (check, _) = scripted(&[Up]);
    health.register(spec("db", thresholds(1, 1, 2, 2)), check).unwrap();
    assert_eq!(observe(&health, "db", 4).await, [Ko, Warn, Warn, Up]);
}

#[tokio::test(start_paused = true)]
async fn fall_two_two_from_ok_takes_two_failures_to_warn_and_two_more_to_ko() {
    let health = ungrouped();
    let (check, _) = scripted(&[Up, Up, Ko]);
    health.register(spec("db", thresholds(2, 2, 1, 1)), check).unwrap();
    assert_eq!(observe(&health, "db", 6).await, [Warn, Up, Up, Warn, Warn, Ko]);
    assert!(health.snapshot().components["db"].last_fall.is_some());
}

#[tokio::test(start_paused = true)]
async fn interrupted_rises_never_leave_ko() {
    let health = ungrouped();
    let script: Vec<Status> = std::iter::repeat_n([Up, Up, Ko], 5).flatten().collect();
    let (check, calls) = scripted(&script);
    health.register(spec("db", thresholds(1, 1, 3, 1)), check).unwrap();
    assert!(observe(&health, "db", 14).await.iter().all(|s| *s == Ko));
    assert_eq!(calls.load(Ordering::SeqCst), 15, "checks at 0 s, 1 s, ... 14 s");
}

#[tokio::test(start_paused = true)]
async fn the_message_clears_after_success() {
    let health = ungrouped();
    let (check, _) = scripted(&[Ko, Up]);
    health.register(spec("db", Thresholds::default()), check).unwrap();
    tokio::time::sleep(TICK / 2).await;
    assert_eq!(component(&health, "db"), (Ko, "refused".to_owned()));
    tokio::time::sleep(TICK).await;
    assert_eq!(component(&health, "db"), (Warn, String::new()));
}

#[tokio::test(start_paused = true)]
async fn a_never_returning_check_is_ko_after_its_timeout() {
    let health = ungrouped();
    let (check, calls) = scripted(&[Up]);
    health.register(spec("ok", Thresholds::default()), check).unwrap();
    health
        .register(ComponentSpec::new("hang").interval(TICK).timeout(Duration::from_millis(300)), || {
            std::future::pending::<Report>()
        })
        .unwrap();
    tokio::time::sleep(Duration::from_millis(299)).await;
    assert_eq!(component(&health, "hang").1, "pending first check");
    tokio::time::sleep(Duration::from_millis(2)).await;
    let view = health.snapshot().components["hang"].clone();
    assert_eq!((view.status, view.message.as_str()), (Ko, "check timed out after 300ms"));
    assert_eq!(view.failures, 1);
    assert!(calls.load(Ordering::SeqCst) >= 1, "other monitors are unaffected");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blocking_check_still_fails_at_its_timeout() {
    // Real time: a check that blocks its thread cannot be driven by paused
    // time. The bound below is an upper limit on an event we wait for, not a
    // sleep that hopes. Both worker threads get blocked by successive runs;
    // only isolated monitors still fail them on time.
    let options = keel_health_status::HealthOptions { isolated: true, ..Default::default() };
    let health = Health::with_options(MandatoryList::default(), options).unwrap();
    let calls = Arc::new(AtomicU32::new(0));
    let blocked_at = Arc::new(Mutex::new(None));
    let (c, b) = (calls.clone(), blocked_at.clone());
    let check = move || {
        let n = c.fetch_add(1, Ordering::SeqCst);
        let b = b.clone();
        async move {
            if n >= 2 {
                *b.lock().unwrap() = Some(std::time::Instant::now());
                std::thread::sleep(Duration::from_secs(2));
            }
            Report::ok()
        }
    };
    let mut changes = health.subscribe();
    let spec = ComponentSpec::new("blocking").interval(Duration::from_millis(20)).timeout(Duration::from_millis(200));
    health.register(spec, check).unwrap();
    let fell = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            let change = changes.recv().await.unwrap();
            if change.from == Some(Up) && change.to == Warn {
                return change;
            }
        }
    })
    .await
    .expect("the blocking check was never failed");
    let waited = blocked_at.lock().unwrap().unwrap().elapsed();
    assert_eq!(fell.message, "check timed out after 200ms");
    assert!(waited < Duration::from_millis(400), "failed {waited:?} after the check blocked (timeout 200ms)");
}

#[tokio::test(start_paused = true)]
async fn a_panicking_check_is_ko_and_the_monitor_keeps_running() {
    let health = ungrouped();
    let calls = Arc::new(AtomicU32::new(0));
    let c = calls.clone();
    health
        .register(spec("boom", Thresholds::default()), move || {
            c.fetch_add(1, Ordering::SeqCst);
            async { panic!("kaboom") }
        })
        .unwrap();
    tokio::time::sleep(TICK * 3 + TICK / 2).await;
    let view = health.snapshot().components["boom"].clone();
    assert_eq!((view.status, view.message.as_str()), (Ko, "check panicked: kaboom"));
    assert_eq!(calls.load(Ordering::SeqCst), 4);
    assert_eq!(view.failures, 4);
}

#[tokio::test(start_paused = true)]
async fn changes_are_broadcast_and_the_cache_follows() {
    let health = Health::new(MandatoryList::new(vec![Mandatory::new("g", Mode::Must, ["db"])]).unwrap(), Mode::Must);
    let mut changes = health.subscribe();
    let (check, _) = scripted(&[Up, Up, Ko]);
    health.register(spec("db", Thresholds::default()), check).unwrap();
    // The climb from KO through WARN is start-up: one initial state, OK.
    let first = changes.recv().await.unwrap();
    assert_eq!((first.component.as_str(), first.from, first.to), ("db", None, Up));
    assert!(health.is_cache_strictly_healthy());
    let second = changes.recv().await.unwrap();
    assert_eq!((second.from, second.to, second.message.as_str()), (Some(Up), Warn, "refused"));
    assert_eq!(health.cached().status, Warn);
    assert!(health.cached().message.contains("db WARN (refused)"), "{}", health.cached().message);
}

#[tokio::test(start_paused = true)]
async fn history_keeps_the_last_transitions_newest_first() {
    // The default keeps 100 per component: 150 alternations keep the last 100.
    let health = ungrouped();
    let flapping: Vec<Status> = (0..150).map(|i| if i % 2 == 0 { Up } else { Ko }).collect();
    let (check, _) = scripted(&flapping);
    health.register(spec("db", Thresholds::default()), check).unwrap();
    let (quiet, _) = scripted(&[Ko]);
    health.register(spec("idle", Thresholds::default()), quiet).unwrap();
    tokio::time::sleep(TICK * 150).await;
    let history = health.history();
    let idle: Vec<(Option<Status>, Status)> = history["idle"].iter().map(|c| (c.from, c.to)).collect();
    assert_eq!(idle, [(None, Ko)], "KO from the start is its initial state, not a transition");
    let db = &history["db"];
    assert_eq!(db.len(), keel_health_status::DEFAULT_HISTORY);
    assert!(db.windows(2).all(|w| w[0].time >= w[1].time), "newest first");
    for change in db {
        assert_eq!(change.component, "db");
        assert_ne!(change.from, Some(change.to));
    }
    // The newest: the last scripted KO took WARN down to KO.
    assert_eq!((db[0].from, db[0].to, db[0].message.as_str()), (Some(Warn), Ko, "refused"));

    // A smaller bound, and none at all.
    for keep in [3, 0] {
        let options = keel_health_status::HealthOptions { history: keep, ..Default::default() };
        let health = Health::with_options(MandatoryList::default(), options).unwrap();
        let (check, _) = scripted(&[Up, Up, Ko, Ko, Up]);
        health.register(spec("db", Thresholds::default()), check).unwrap();
        tokio::time::sleep(TICK * 6).await;
        let db = &health.history()["db"];
        assert_eq!(db.len(), keep);
        if keep == 3 {
            let steps: Vec<(Option<Status>, Status)> = db.iter().map(|c| (c.from, c.to)).collect();
            assert_eq!(
                steps,
                [(Some(Warn), Up), (Some(Ko), Warn), (Some(Warn), Ko)],
                "the last scripted Up repeats: WARN → OK"
            );
        }
    }
}

#[tokio::test(start_paused = true)]
async fn missing_members_count_as_ko_and_subsets_apply_the_same_modes() {
    let groups = MandatoryList::new(vec![
        Mandatory::new("storage", Mode::Must, ["db", "cache"]),
        Mandatory::new("optional", Mode::Ignore, ["ghost"]),
        Mandatory::new("mail", Mode::Should, ["smtp"]),
    ])
    .unwrap();
    let health = Health::new(groups, Mode::Must);
    let (ok, _) = scripted(&[Up]);
    let (bad, _) = scripted(&[Ko]);
    health.register(spec("db", Thresholds::default()), ok).unwrap();
    health.register(spec("smtp", Thresholds::default()), bad).unwrap();
    tokio::time::sleep(TICK * 2).await;

    let snapshot = health.snapshot();
    assert_eq!(snapshot.components["cache"].message, "missing");
    assert!(!snapshot.components["cache"].registered);
    assert!(!snapshot.components.contains_key("ghost"), "a missing ignored member is not news");
    assert_eq!(snapshot.status, Ko, "a missing Must member is not healthy");
    assert_eq!(snapshot.group("mail").unwrap().impact, Warn);

    assert!(health.is_strictly_healthy_for(&["db"]));
    assert!(!health.is_healthy_for(&["storage"]));
    assert!(health.is_healthy_for(&["smtp"]) && !health.is_strictly_healthy_for(&["smtp"]));
    assert!(!health.is_healthy_for(&["nonexistent"]), "unknown names are missing");
}

#[tokio::test(start_paused = true)]
async fn first_checks_waits_for_every_component() {
    let health = ungrouped();
    let (fast, _) = scripted(&[Up]);
    health.register(spec("fast", Thresholds::default()), fast).unwrap();
    health
        .register(spec("slow", Thresholds::default()), || async {
            tokio::time::sleep(Duration::from_millis(400)).await;
            Report::fail("late")
        })
        .unwrap();
    let started = tokio::time::Instant::now();
    health.first_checks().await;
    assert_eq!(started.elapsed(), Duration::from_millis(400));
    assert_eq!(component(&health, "slow"), (Ko, "late".to_owned()));
}

#[tokio::test(start_paused = true)]
async fn duplicate_and_invalid_registrations_are_errors() {
    let health = ungrouped();
    health.register(spec("db", Thresholds::default()), || std::future::ready(Report::ok())).unwrap();
    let err = health.register(spec("db", Thresholds::default()), || std::future::ready(Report::ok())).unwrap_err();
    assert!(err.to_string().contains("already registered"));
    let err = health.register(ComponentSpec::new("x").interval(Duration::ZERO), || std::future::ready(Report::ok()));
    assert!(err.unwrap_err().to_string().contains("positive"));
    health.shutdown().await;
}

mod model {
    //! The aggregate against a straightforward model of the control modes in
    //! `docs/health-status.md` ("Control modes"), for random
    //! groups and states, in random registration orders.

    use super::*;
    use proptest::prelude::*;

    #[derive(Debug, Clone)]
    struct Case {
        /// Group (0..3) or none (3) per component c0..c7.
        membership: Vec<usize>,
        modes: [Mode; 3],
        default_mode: Mode,
        /// None: not registered.
        states: Vec<Option<Status>>,
        order: Vec<usize>,
    }

    fn status() -> impl Strategy<Value = Status> {
        prop_oneof![Just(Up), Just(Warn), Just(Ko)]
    }

    fn mode() -> impl Strategy<Value = Mode> {
        prop::sample::select(Mode::ALL.to_vec())
    }

    fn case() -> impl Strategy<Value = Case> {
        (
            prop::collection::vec(0usize..4, 8),
            [mode(), mode(), mode()],
            mode(),
            prop::collection::vec(prop::option::weighted(0.85, status()), 8),
            Just((0..8).collect::<Vec<usize>>()).prop_shuffle(),
        )
            .prop_map(|(membership, modes, default_mode, states, order)| Case {
                membership,
                modes,
                default_mode,
                states,
                order,
            })
    }

    fn groups(case: &Case) -> Vec<Mandatory> {
        (0..3)
            .filter_map(|g| {
                let members: Vec<String> =
                    (0..8).filter(|c| case.membership[*c] == g).map(|c| format!("c{c}")).collect();
                (!members.is_empty()).then(|| Mandatory::new(format!("g{g}"), case.modes[g], members))
            })
            .collect()
    }

    /// The control modes of `docs/health-status.md`, written as plainly as possible.
    fn expected(case: &Case) -> Status {
        let mut sets: Vec<(Mode, Vec<Option<Status>>)> = Vec::new();
        for g in 0..3 {
            let members: Vec<Option<Status>> =
                (0..8).filter(|c| case.membership[*c] == g).map(|c| case.states[c]).collect();
            if !members.is_empty() {
                sets.push((case.modes[g], members));
            }
        }
        let ungrouped: Vec<Option<Status>> =
            (0..8).filter(|c| case.membership[*c] == 3 && case.states[*c].is_some()).map(|c| case.states[c]).collect();
        if !ungrouped.is_empty() {
            sets.push((case.default_mode, ungrouped));
        }
        let mut global = Up;
        for (mode, members) in sets {
            let statuses: Vec<Status> = members.iter().map(|s| s.unwrap_or(Ko)).collect();
            let n = statuses.len();
            let ok = statuses.iter().filter(|s| **s == Up).count();
            let tolerable = statuses.iter().filter(|s| **s != Ko).count();
            let group = match mode {
                Mode::Ignore => Up,
                Mode::Should => {
                    if ok == n {
                        Up
                    } else {
                        Warn
                    }
                }
                Mode::Must => *statuses.iter().min().unwrap(),
                Mode::AnyOf => *statuses.iter().max().unwrap(),
                Mode::Quorum => {
                    if 2 * ok > n {
                        Up
                    } else if 2 * tolerable > n {
                        Warn
                    } else {
                        Ko
                    }
                }
            };
            global = global.min(group);
        }
        global
    }

    /// Registers the components in `order` with constant checks and lets two
    /// checks run, so each settles on its scripted status.
    fn run(case: &Case, order: &[usize]) -> keel_health_status::Snapshot {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_time().start_paused(true).build().unwrap();
        runtime.block_on(async {
            let health = Health::new(MandatoryList::new(groups(case)).unwrap(), case.default_mode);
            for c in order {
                if let Some(status) = case.states[*c] {
                    let report = match status {
                        Up => Report::ok(),
                        Warn => Report::warn("slow"),
                        Ko => Report::fail("down"),
                    };
                    health
                        .register(spec(&format!("c{c}"), Thresholds::default()), move || {
                            std::future::ready(report.clone())
                        })
                        .unwrap();
                }
            }
            tokio::time::sleep(TICK + TICK / 2).await;
            assert_eq!(health.cached_status(), health.snapshot().status, "cache and live agree when quiet");
            let snapshot = health.snapshot();
            health.shutdown().await;
            snapshot
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]

        #[test]
        fn aggregate_matches_the_model_in_any_order(case in case()) {
            let forward = run(&case, &case.order);
            let mut reversed = case.order.clone();
            reversed.reverse();
            let backward = run(&case, &reversed);
            prop_assert_eq!(forward.status, expected(&case));
            prop_assert_eq!(&forward.message, &backward.message);
            prop_assert_eq!(&forward.groups, &backward.groups);
            prop_assert_eq!(forward.status, backward.status);
        }
    }
}

#[tokio::test(start_paused = true)]
async fn rise_and_fall_intervals_apply_while_moving() {
    let health = ungrouped();
    let (check, calls) = scripted(&[Up, Up, Up, Ko, Ko]);
    let spec = ComponentSpec {
        rise_interval: Some(Duration::from_millis(100)),
        fall_interval: Some(Duration::from_millis(200)),
        ..spec("db", Thresholds::default())
    };
    health.register(spec, check).unwrap();
    // t=0 KO→WARN (rising: next in 100 ms), t=100 WARN→OK (steady: next in 1 s).
    tokio::time::sleep(Duration::from_millis(150)).await;
    assert_eq!((component(&health, "db").0, calls.load(Ordering::SeqCst)), (Up, 2));
    // t=1100 OK, t=2100 OK→WARN (falling: next in 200 ms), t=2300 WARN→KO.
    tokio::time::sleep(Duration::from_millis(2200)).await;
    assert_eq!((component(&health, "db").0, calls.load(Ordering::SeqCst)), (Ko, 5));
}

#[tokio::test(start_paused = true)]
async fn status_duration_and_transitions_are_exported() {
    let telemetry = keel_telemetry::Telemetry::new("t").unwrap();
    let health = ungrouped();
    health.instrument(&telemetry);
    let (check, _) = scripted(&[Up, Up, Ko]);
    health.register(spec("db", Thresholds::default()), check).unwrap();
    tokio::time::sleep(TICK * 2 + TICK / 2).await;
    let text = telemetry.encode().unwrap();
    assert!(text.contains("keel_health_status{component=\"db\"} 1"), "WARN after OK, OK, KO:\n{text}");
    assert!(text.contains("keel_health_check_duration_seconds_count{component=\"db\"} 3"), "{text}");
    // The climb from KO to OK at start-up is no transition; the fall is.
    let series = "keel_health_transitions_total{component=\"db\",from=\"OK\",to=\"WARN\"} 1";
    assert!(text.contains(series), "{series} missing:\n{text}");
    assert_eq!(text.matches("keel_health_transitions_total{").count(), 1, "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_and_http_checks_probe_real_sockets() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    // A tiny HTTP server: /ok answers 200, anything else 503.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((mut socket, _)) = listener.accept().await else { return };
            tokio::spawn(async move {
                let mut buffer = [0u8; 1024];
                let n = socket.read(&mut buffer).await.unwrap_or(0);
                let status = if String::from_utf8_lossy(&buffer[..n]).starts_with("GET /ok ") {
                    "200 OK"
                } else {
                    "503 Service Unavailable"
                };
                let _ = socket
                    .write_all(
                        format!("HTTP/1.1 {status}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n").as_bytes(),
                    )
                    .await;
            });
        }
    });
    let run = |check: keel_health_status::SharedCheck| async move { check.check().await };
    use keel_health_status::checks;
    assert_eq!(run(checks::tcp(addr.to_string())).await.status, Up);
    assert_eq!(run(checks::http(&format!("http://{addr}/ok"), None).unwrap()).await.status, Up);
    let bad = run(checks::http(&format!("http://{addr}/down"), None).unwrap()).await;
    assert_eq!(bad.status, Ko);
    assert!(bad.message.contains("status 503"), "{}", bad.message);
    assert_eq!(run(checks::http(&format!("http://{addr}/down"), Some(503)).unwrap()).await.status, Up, "expect_status");
    let closed = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap().local_addr().unwrap();
    let refused = run(checks::tcp(closed.to_string())).await;
    assert_eq!(refused.status, Ko);
    assert!(checks::http("https://example.invalid/", None).is_err(), "https is refused up front");
}
