//! The scheduler against a real host and store: timing, replace and delete, retries, start-up
//! rebuild, bounded concurrency, compaction and shutdown.

use std::cell::RefCell;
use std::time::Duration;

use super::testing::{body, eventually, get, with_harness};
use super::SchedulerConfig;
use crate::http::{Request, Response};
use crate::id::ObjectId;
use crate::object::{now_ms, AlarmInfo, ClassRegistry, DurableObject, ObjectContext, ObjectError};

/// How long a test waits for something that should happen within milliseconds.
const PATIENCE: Duration = Duration::from_secs(10);

/// Test class. `/set/{ms}` sets the alarm, `/delete` deletes it, `/fail/{n}` makes the next
/// `n` alarm deliveries fail, `/again/{ms}` makes the next delivery re-set the alarm `ms` later.
/// Every delivery is logged in `FIRINGS`.
struct Probe {
    context: ObjectContext,
}

/// One delivery seen by a probe.
#[derive(Clone, Copy, Debug)]
struct Firing {
    id: ObjectId,
    info: AlarmInfo,
    at_ms: i64,
}

thread_local! {
    /// Deliveries on this test's executor thread, in order.
    static FIRINGS: RefCell<Vec<Firing>> = const { RefCell::new(Vec::new()) };
}

fn firings_of(id: ObjectId) -> Vec<Firing> {
    FIRINGS.with(|firings| {
        firings
            .borrow()
            .iter()
            .filter(|firing| firing.id == id)
            .copied()
            .collect()
    })
}

fn stored_number(context: &ObjectContext, key: &[u8]) -> i64 {
    context
        .storage()
        .get(key)
        .and_then(|bytes| String::from_utf8(bytes).ok())
        .and_then(|text| text.parse().ok())
        .unwrap_or(0)
}

impl DurableObject for Probe {
    fn new(context: ObjectContext) -> Probe {
        Probe { context }
    }

    async fn fetch(&self, request: Request) -> Result<Response, ObjectError> {
        let storage = self.context.storage();
        let number = |text: &str| {
            text.parse::<i64>()
                .map_err(|error| ObjectError::new(error.to_string()))
        };
        let path = request.path.as_str();
        if let Some(ms) = path.strip_prefix("/set/") {
            storage.set_alarm(number(ms)?)?;
        } else if path == "/delete" {
            storage.delete_alarm()?;
        } else if let Some(count) = path.strip_prefix("/fail/") {
            storage.put(b"fail", count)?;
        } else if let Some(ms) = path.strip_prefix("/again/") {
            storage.put(b"again", ms)?;
        } else {
            return Ok(Response::not_found());
        }
        Ok(Response::text(200, "ok"))
    }

    async fn alarm(&self, info: AlarmInfo) -> Result<(), ObjectError> {
        let firing = Firing {
            id: self.context.id(),
            info,
            at_ms: now_ms(),
        };
        FIRINGS.with(|firings| firings.borrow_mut().push(firing));
        let storage = self.context.storage();
        let again = stored_number(&self.context, b"again");
        if again > 0 {
            storage.delete(b"again")?;
            storage.set_alarm(now_ms() + again)?;
        }
        let fail = stored_number(&self.context, b"fail");
        if fail > 0 {
            storage.put(b"fail", (fail - 1).to_string())?;
            return Err(ObjectError::new("failing on purpose"));
        }
        Ok(())
    }
}

fn register_probe(registry: &mut ClassRegistry) {
    registry.register::<Probe>("probe").expect("register");
}

fn probe(name: &str) -> ObjectId {
    ObjectId::from_name("probe", name)
}

fn fast_retries() -> SchedulerConfig {
    SchedulerConfig {
        retry_first_delay_ms: 40,
        retries_max: 3,
        ..SchedulerConfig::default()
    }
}

#[test]
fn an_alarm_fires_once_at_about_its_time() {
    let dir = tempfile::tempdir().expect("temp dir");
    with_harness(
        dir.path(),
        register_probe,
        SchedulerConfig::default(),
        |harness| async move {
            let id = probe("once");
            let at = now_ms() + 120;
            let response = harness
                .host
                .dispatch("probe", id, get(&format!("/set/{at}")))
                .await;
            assert_eq!(response.status, 200, "{}", body(&response));
            assert!(
                eventually(PATIENCE, || !firings_of(id).is_empty()).await,
                "never fired"
            );
            assert!(eventually(PATIENCE, || harness.alarms.stats().in_flight == 0).await);
            let firings = firings_of(id);
            assert_eq!(firings.len(), 1);
            assert_eq!(
                firings[0].info,
                AlarmInfo {
                    scheduled_ms: at,
                    retry_count: 0
                }
            );
            assert!(firings[0].at_ms >= at, "fired early: {:?}", firings[0]);
            let stats = harness.alarms.stats();
            assert_eq!(
                (stats.pending, stats.fired_total, stats.lateness_count),
                (0, 1, 1),
                "{stats:?}"
            );
            assert!(stats.lateness_max_ms < 1_000.0, "{stats:?}");
            assert_eq!(
                harness.host.store().alarm(&id.0),
                None,
                "a fired alarm is deleted"
            );
        },
    );
}

#[test]
fn a_replaced_alarm_fires_at_its_new_time_and_a_deleted_one_never() {
    let dir = tempfile::tempdir().expect("temp dir");
    with_harness(
        dir.path(),
        register_probe,
        SchedulerConfig::default(),
        |harness| async move {
            let (replaced, deleted, sentinel) =
                (probe("replaced"), probe("deleted"), probe("sentinel"));
            let now = now_ms();
            let set = |id, at: i64| {
                let host = harness.host.clone();
                async move {
                    host.dispatch("probe", id, get(&format!("/set/{at}")))
                        .await
                        .status
                }
            };
            assert_eq!(set(replaced, now + 60).await, 200);
            assert_eq!(set(replaced, now + 150).await, 200);
            assert_eq!(set(deleted, now + 50).await, 200);
            assert_eq!(
                harness
                    .host
                    .dispatch("probe", deleted, get("/delete"))
                    .await
                    .status,
                200
            );
            assert_eq!(set(sentinel, now + 250).await, 200);
            assert!(eventually(PATIENCE, || !firings_of(sentinel).is_empty()).await);
            let firings = firings_of(replaced);
            assert_eq!(firings.len(), 1, "{firings:?}");
            assert_eq!(firings[0].info.scheduled_ms, now + 150);
            assert!(firings[0].at_ms >= now + 150);
            assert!(firings_of(deleted).is_empty(), "a deleted alarm fired");
            assert!(eventually(PATIENCE, || harness.alarms.stats().pending == 0).await);
        },
    );
}

#[test]
fn a_failing_handler_is_retried_with_backoff_then_given_up() {
    let dir = tempfile::tempdir().expect("temp dir");
    with_harness(
        dir.path(),
        register_probe,
        fast_retries(),
        |harness| async move {
            let (recovers, hopeless) = (probe("recovers"), probe("hopeless"));
            for (id, failures) in [(recovers, 2), (hopeless, 100)] {
                assert_eq!(
                    harness
                        .host
                        .dispatch("probe", id, get(&format!("/fail/{failures}")))
                        .await
                        .status,
                    200
                );
                let at = now_ms() + 20;
                assert_eq!(
                    harness
                        .host
                        .dispatch("probe", id, get(&format!("/set/{at}")))
                        .await
                        .status,
                    200
                );
            }
            assert!(eventually(PATIENCE, || harness.alarms.stats().given_up_total == 1).await);
            assert!(eventually(PATIENCE, || harness.alarms.stats().fired_total == 1).await);
            let firings = firings_of(recovers);
            let counts: Vec<u32> = firings
                .iter()
                .map(|firing| firing.info.retry_count)
                .collect();
            assert_eq!(counts, [0, 1, 2]);
            assert!(firings
                .iter()
                .all(|firing| firing.info.scheduled_ms == firings[0].info.scheduled_ms));
            // The delays double: at least 40 ms, then at least 80 ms.
            assert!(firings[1].at_ms - firings[0].at_ms >= 40, "{firings:?}");
            assert!(firings[2].at_ms - firings[1].at_ms >= 80, "{firings:?}");
            assert_eq!(harness.host.store().alarm(&recovers.0), None);

            let counts: Vec<u32> = firings_of(hopeless)
                .iter()
                .map(|firing| firing.info.retry_count)
                .collect();
            assert_eq!(counts, [0, 1, 2, 3], "the first attempt and 3 retries");
            assert!(
                harness.host.store().alarm(&hopeless.0).is_some(),
                "a given-up alarm stays stored"
            );
            let stats = harness.alarms.stats();
            assert_eq!(
                (stats.failures_total, stats.retries_total),
                (6, 5),
                "{stats:?}"
            );
            assert_eq!(stats.pending, 0);
        },
    );
}

#[test]
fn a_handler_that_re_sets_its_alarm_fires_again() {
    let dir = tempfile::tempdir().expect("temp dir");
    with_harness(
        dir.path(),
        register_probe,
        SchedulerConfig::default(),
        |harness| async move {
            let id = probe("again");
            assert_eq!(
                harness
                    .host
                    .dispatch("probe", id, get("/again/30"))
                    .await
                    .status,
                200
            );
            let at = now_ms() + 10;
            assert_eq!(
                harness
                    .host
                    .dispatch("probe", id, get(&format!("/set/{at}")))
                    .await
                    .status,
                200
            );
            assert!(eventually(PATIENCE, || firings_of(id).len() == 2).await);
            let firings = firings_of(id);
            assert!(
                firings[1].info.scheduled_ms >= firings[0].at_ms + 30,
                "{firings:?}"
            );
            assert!(eventually(PATIENCE, || harness.alarms.stats().pending == 0).await);
            assert_eq!(harness.host.store().alarm(&id.0), None);
            assert_eq!(firings_of(id).len(), 2);
        },
    );
}

#[test]
fn start_up_rebuilds_from_the_store_and_fires_overdue_alarms() {
    let dir = tempfile::tempdir().expect("temp dir");
    let now = now_ms();
    // A first run stops its scheduler, then sets alarms that are already overdue, as if the
    // server had gone down before their time.
    with_harness(
        dir.path(),
        register_probe,
        SchedulerConfig::default(),
        move |harness| async move {
            harness.shutdown.request();
            assert!(eventually(PATIENCE, || !harness.alarms.is_running()).await);
            for index in 0..50 {
                let id = probe(&format!("o{index}"));
                let response = harness
                    .host
                    .dispatch("probe", id, get(&format!("/set/{}", now - 1_000 + index)))
                    .await;
                assert_eq!(response.status, 200);
            }
            let far = probe("far");
            let response = harness
                .host
                .dispatch("probe", far, get(&format!("/set/{}", now + 3_600_000)))
                .await;
            assert_eq!(response.status, 200);
            let deleted = probe("deleted");
            assert_eq!(
                harness
                    .host
                    .dispatch("probe", deleted, get(&format!("/set/{}", now - 500)))
                    .await
                    .status,
                200
            );
            assert_eq!(
                harness
                    .host
                    .dispatch("probe", deleted, get("/delete"))
                    .await
                    .status,
                200
            );
            assert!(FIRINGS.with(|firings| firings.borrow().is_empty()));
        },
    );
    with_harness(
        dir.path(),
        register_probe,
        SchedulerConfig::default(),
        |harness| async move {
            assert!(eventually(PATIENCE, || harness.alarms.stats().fired_total == 50).await);
            // Only the objects whose alarm fired were activated, not the one whose alarm waits.
            assert_eq!(harness.host.stats().activations_total, 50);
            for index in 0..50 {
                assert_eq!(firings_of(probe(&format!("o{index}"))).len(), 1);
            }
            assert!(firings_of(probe("deleted")).is_empty());
            assert!(firings_of(probe("far")).is_empty());
            assert_eq!(harness.alarms.stats().pending, 1);
        },
    );
}

#[test]
fn deliveries_in_flight_stay_within_their_bound() {
    let dir = tempfile::tempdir().expect("temp dir");
    let config = SchedulerConfig {
        deliveries_in_flight_max: 4,
        ..SchedulerConfig::default()
    };
    with_harness(dir.path(), register_probe, config, |harness| async move {
        let at = now_ms() + 50;
        for index in 0..200 {
            let id = probe(&format!("many{index}"));
            assert_eq!(
                harness
                    .host
                    .dispatch("probe", id, get(&format!("/set/{at}")))
                    .await
                    .status,
                200
            );
        }
        let mut most_in_flight = 0;
        let done = eventually(PATIENCE, || {
            let stats = harness.alarms.stats();
            most_in_flight = most_in_flight.max(stats.in_flight);
            stats.fired_total == 200
        })
        .await;
        assert!(done, "{:?}", harness.alarms.stats());
        assert!(most_in_flight <= 4, "{most_in_flight} deliveries at once");
        assert_eq!(FIRINGS.with(|firings| firings.borrow().len()), 200);
    });
}

#[test]
fn replacing_a_far_alarm_many_times_keeps_the_wheel_small() {
    let dir = tempfile::tempdir().expect("temp dir");
    let config = SchedulerConfig {
        compact_entries_min: 16,
        ..SchedulerConfig::default()
    };
    with_harness(dir.path(), register_probe, config, |harness| async move {
        let id = probe("restless");
        let far = now_ms() + 3_600_000;
        for offset in 0..500 {
            let response = harness
                .host
                .dispatch("probe", id, get(&format!("/set/{}", far + offset)))
                .await;
            assert_eq!(response.status, 200);
        }
        let pending = harness.alarms.stats().pending;
        assert!(
            (1..=17).contains(&pending),
            "{pending} entries for one alarm"
        );
        // The entry that survives compaction is the stored one: it fires when due.
        let soon = now_ms() + 20;
        assert_eq!(
            harness
                .host
                .dispatch("probe", id, get(&format!("/set/{soon}")))
                .await
                .status,
            200
        );
        assert!(eventually(PATIENCE, || firings_of(id).len() == 1).await);
        assert_eq!(firings_of(id)[0].info.scheduled_ms, soon);
    });
}

#[test]
fn shutdown_stops_the_driver() {
    let dir = tempfile::tempdir().expect("temp dir");
    with_harness(
        dir.path(),
        register_probe,
        SchedulerConfig::default(),
        |harness| async move {
            assert!(harness.alarms.is_running());
            harness.shutdown.request();
            assert!(eventually(PATIENCE, || !harness.alarms.is_running()).await);
        },
    );
}
