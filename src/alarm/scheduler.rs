//! [`AlarmScheduler`]: delivers the durable alarms of one core's objects.
//!
//! The store's index is the authority on every object's alarm; the scheduler keeps only a
//! timer wheel of `(deadline, object id)` entries, 40 bytes each, and no per-object map. When an
//! alarm is set or replaced the host's alarm listener inserts a new entry and leaves the old one
//! where it is; when an entry falls due it is checked against the store (`Store::alarm`) and
//! skipped unless it still matches, so a replaced or deleted alarm never fires and at most one
//! delivery per object is live. Skipped entries leave the wheel when their time passes; if they
//! pile up faster (an object re-setting a far alarm in a loop), the wheel is compacted once it
//! holds twice the entries it held after the last compaction.
//!
//! One driver task per core sleeps on a single glommio timer until the wheel's next deadline
//! (at most `sleep_max_ms`, so a wall-clock jump cannot delay alarms for long) and is woken
//! early when an earlier alarm is inserted. Due alarms wait in a backlog and are delivered as
//! events of their objects (`ObjectHost::deliver_alarm`), each in a task of its own, at most
//! `deliveries_in_flight_max` at once. Delivery is at least once: a failed handler is retried
//! after `retry_first_delay_ms`, doubling each time, at most `retries_max` times, and the handler
//! is told the retry count. An alarm given up after its last retry stays stored, so it is tried
//! again after a restart.

use std::cell::{Cell, RefCell};
use std::collections::{HashMap, VecDeque};
use std::rc::Rc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::stats::{AlarmStats, Lateness};
use super::TimerWheel;
use crate::id::ObjectId;
use crate::object::{AlarmInfo, EventError, ObjectHost};
use crate::shutdown::Shutdown;
use crate::wake::Notify;

/// How the scheduler retries, how much it runs at once, and how it keeps its wheel small.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SchedulerConfig {
    /// Delay before the first retry of a failed alarm, in milliseconds; each later retry waits
    /// twice as long as the one before (the hosted service starts at about 2 s).
    pub retry_first_delay_ms: u64,
    /// Retries after the first failed delivery before the alarm is given up (the hosted
    /// service allows 6).
    pub retries_max: u32,
    /// Alarm deliveries running at once on one core; due alarms past it wait in the backlog.
    pub deliveries_in_flight_max: usize,
    /// Longest sleep of the driver, in milliseconds: the wheel runs on the wall clock, and a
    /// clock that jumps forward is noticed within this time.
    pub sleep_max_ms: u64,
    /// The wheel is never compacted below this many entries (compaction is a full pass).
    pub compact_entries_min: usize,
}

impl Default for SchedulerConfig {
    fn default() -> SchedulerConfig {
        SchedulerConfig {
            retry_first_delay_ms: 2_000,
            retries_max: 6,
            deliveries_in_flight_max: 512,
            sleep_max_ms: 1_000,
            compact_entries_min: 4_096,
        }
    }
}

/// A failed alarm waiting for its next attempt.
#[derive(Clone, Copy, Debug)]
struct Retry {
    /// The alarm's time as stored; the retry is void once the stored alarm differs.
    scheduled_ms: i64,
    /// The retry count the next attempt reports (1 for the first retry).
    retry_count: u32,
    /// The wheel deadline of the next attempt, which tells its entry from stale ones.
    attempt_at_ms: u64,
}

/// Totals behind [`AlarmStats`].
#[derive(Clone, Copy, Debug, Default)]
struct Counters {
    fired_total: u64,
    failures_total: u64,
    retries_total: u64,
    given_up_total: u64,
}

/// The scheduler's mutable state; only ever borrowed for a few statements, never across an
/// await.
struct State {
    /// Pending entries, `(deadline in ms since the epoch, object)`.
    wheel: TimerWheel<ObjectId>,
    /// The time the driver's timer is set for, while it sleeps; an entry due earlier wakes it.
    armed_ms: Option<u64>,
    /// Entries taken off the wheel as due and not yet checked and delivered. Bounded by the
    /// wheel's size, since entries only move here from there.
    backlog: VecDeque<(u64, ObjectId)>,
    /// Objects whose alarm is being delivered, each with whether another of its entries fell
    /// due meanwhile (then the stored alarm is looked at again when the delivery ends).
    /// Bounded by `deliveries_in_flight_max`.
    in_flight: HashMap<ObjectId, bool>,
    /// Failed alarms waiting for a retry. At most one per object with a stored alarm.
    retries: HashMap<ObjectId, Retry>,
    /// The wheel is compacted when it holds more entries than this.
    compact_above: usize,
    /// Lateness of first delivery attempts.
    lateness: Lateness,
    /// Totals for [`AlarmStats`].
    counters: Counters,
}

/// Delivers one core's alarms. Create it with [`AlarmScheduler::start`] inside the core's
/// executor, after the core's [`ObjectHost`].
pub struct AlarmScheduler {
    /// The core's objects; its store says which alarm each object has.
    host: Rc<ObjectHost>,
    /// Stops the driver and keeps failed deliveries from being retried.
    shutdown: Rc<Shutdown>,
    /// Retry policy and bounds.
    config: SchedulerConfig,
    /// Wheel, backlog, deliveries in flight, retries, statistics.
    state: RefCell<State>,
    /// Wakes the driver before its timer: an earlier alarm, or shutdown.
    wakeup: Notify,
    /// Whether the driver task is still running.
    running: Cell<bool>,
}

impl AlarmScheduler {
    /// Rebuilds the wheel from the store's alarms (without activating any object), installs
    /// the host's alarm listener and spawns the driver on the current executor. Alarms whose
    /// time passed while the server was down fire right away.
    pub fn start(host: Rc<ObjectHost>, shutdown: Rc<Shutdown>) -> Rc<AlarmScheduler> {
        AlarmScheduler::start_with(host, shutdown, SchedulerConfig::default())
    }

    /// [`AlarmScheduler::start`] with a chosen configuration.
    pub fn start_with(
        host: Rc<ObjectHost>,
        shutdown: Rc<Shutdown>,
        config: SchedulerConfig,
    ) -> Rc<AlarmScheduler> {
        let mut wheel = TimerWheel::new(wall_clock_micros() / 1_000);
        for (id, time_ms) in host.store().objects_with_alarms() {
            wheel.insert(deadline_of(time_ms), ObjectId(id));
        }
        wheel.shrink_to_fit();
        let compact_above = config.compact_entries_min.max(2 * wheel.len());
        let state = State {
            wheel,
            armed_ms: None,
            backlog: VecDeque::new(),
            in_flight: HashMap::new(),
            retries: HashMap::new(),
            compact_above,
            lateness: Lateness::new(),
            counters: Counters::default(),
        };
        let scheduler = Rc::new(AlarmScheduler {
            host: host.clone(),
            shutdown: shutdown.clone(),
            config,
            state: RefCell::new(state),
            wakeup: Notify::default(),
            running: Cell::new(true),
        });
        let listener = Rc::downgrade(&scheduler);
        host.set_alarm_listener(Rc::new(move |id, change| {
            if let Some(scheduler) = listener.upgrade() {
                scheduler.on_change(id, change);
            }
        }));
        let watcher = Rc::downgrade(&scheduler);
        glommio::spawn_local(async move {
            shutdown.wait().await;
            if let Some(scheduler) = watcher.upgrade() {
                scheduler.wakeup.notify();
            }
        })
        .detach();
        glommio::spawn_local(drive(scheduler.clone())).detach();
        scheduler
    }

    pub fn stats(&self) -> AlarmStats {
        let state = self.state.borrow();
        let mut stats = AlarmStats {
            pending: state.wheel.len(),
            in_flight: state.in_flight.len(),
            backlog: state.backlog.len(),
            fired_total: state.counters.fired_total,
            failures_total: state.counters.failures_total,
            retries_total: state.counters.retries_total,
            given_up_total: state.counters.given_up_total,
            ..AlarmStats::default()
        };
        state.lateness.report(&mut stats);
        stats
    }

    /// Whether the driver still runs (it stops once shutdown is requested).
    pub fn is_running(&self) -> bool {
        self.running.get()
    }

    /// The host's alarm listener: an alarm was committed (`Some`) or deleted (`None`).
    fn on_change(&self, id: ObjectId, change: Option<i64>) {
        // Setting or deleting the alarm ends any retry sequence of the old one.
        self.state.borrow_mut().retries.remove(&id);
        if let Some(time_ms) = change {
            self.insert(deadline_of(time_ms), id);
        }
    }

    /// Adds the stored alarms of the objects `which` picks to the wheel: for a store filled
    /// after the scheduler started (a cluster node's replay of the log when it takes the
    /// partitions over, or a partition rebuilt from it). An entry the wheel holds already is
    /// harmless: a due entry whose alarm is not the stored one, or is being delivered, is
    /// skipped.
    pub fn load_stored_of(&self, which: impl Fn(&ObjectId) -> bool) {
        for (id, time_ms) in self.host.store().objects_with_alarms() {
            let id = ObjectId(id);
            if which(&id) {
                self.insert(deadline_of(time_ms), id);
            }
        }
    }

    /// Adds a wheel entry, waking the driver if it sleeps past the entry's deadline.
    fn insert(&self, deadline_ms: u64, id: ObjectId) {
        let mut state = self.state.borrow_mut();
        state.wheel.insert(deadline_ms, id);
        if state
            .armed_ms
            .is_some_and(|armed_ms| deadline_ms < armed_ms)
        {
            state.armed_ms = None;
            self.wakeup.notify();
        }
        if state.wheel.len() > state.compact_above {
            self.compact(&mut state);
        }
    }

    /// Drops the entries that no longer match a stored alarm or a pending retry.
    fn compact(&self, state: &mut State) {
        let store = self.host.store();
        let State { wheel, retries, .. } = state;
        let dropped = wheel.retain_unique(|deadline_ms, id| {
            let stored = store.alarm(&id.0).map(deadline_of);
            stored == Some(deadline_ms)
                || retries
                    .get(id)
                    .is_some_and(|retry| retry.attempt_at_ms == deadline_ms)
        });
        state.compact_above = self.config.compact_entries_min.max(2 * state.wheel.len());
        tracing::debug!(dropped, kept = state.wheel.len(), "alarm wheel compacted");
    }

    /// Moves every entry due by `now_ms` to the backlog.
    fn take_due(&self, now_ms: u64, due: &mut Vec<(u64, ObjectId)>) {
        let mut state = self.state.borrow_mut();
        state.wheel.advance(now_ms, due);
        state.backlog.extend(due.drain(..));
    }

    /// Starts deliveries from the backlog while there is room.
    fn start_deliveries(self: &Rc<Self>) {
        while !self.shutdown.is_requested() {
            let (id, info) = {
                let mut state = self.state.borrow_mut();
                if state.in_flight.len() >= self.config.deliveries_in_flight_max {
                    return;
                }
                let Some((deadline_ms, id)) = state.backlog.pop_front() else {
                    return;
                };
                let Some(info) = self.check(&mut state, deadline_ms, id) else {
                    continue;
                };
                state.in_flight.insert(id, false);
                if info.retry_count == 0 {
                    let scheduled_micros = deadline_of(info.scheduled_ms).saturating_mul(1_000);
                    state
                        .lateness
                        .record(wall_clock_micros().saturating_sub(scheduled_micros));
                }
                (id, info)
            };
            let Some(class) = self.host.registry().class_of(&id).map(str::to_string) else {
                tracing::warn!(object = %id, "alarm of an object of no registered class dropped");
                let mut state = self.state.borrow_mut();
                state.in_flight.remove(&id);
                state.counters.failures_total += 1;
                continue;
            };
            glommio::spawn_local(deliver(self.clone(), class, id, info)).detach();
        }
    }

    /// What to deliver for a due entry, or `None` when it is stale (the stored alarm changed,
    /// a retry is pending for it, or the object's alarm is being delivered now).
    fn check(&self, state: &mut State, deadline_ms: u64, id: ObjectId) -> Option<AlarmInfo> {
        if let Some(recheck) = state.in_flight.get_mut(&id) {
            *recheck = true;
            return None;
        }
        let stored = self.host.store().alarm(&id.0);
        if let Some(retry) = state.retries.get(&id).copied() {
            if stored == Some(retry.scheduled_ms) {
                let info = AlarmInfo {
                    scheduled_ms: retry.scheduled_ms,
                    retry_count: retry.retry_count,
                };
                return (deadline_ms == retry.attempt_at_ms).then_some(info);
            }
            state.retries.remove(&id);
        }
        let scheduled_ms = stored?;
        let info = AlarmInfo {
            scheduled_ms,
            retry_count: 0,
        };
        (deadline_of(scheduled_ms) == deadline_ms).then_some(info)
    }

    /// Books the outcome of a delivery: counts it, schedules a retry after a failure, and
    /// re-inserts the stored alarm if one of the object's entries fell due meanwhile.
    fn finish(&self, id: ObjectId, info: AlarmInfo, result: Result<(), EventError>) {
        let stored = self.host.store().alarm(&id.0);
        let recheck = {
            let mut state = self.state.borrow_mut();
            let recheck = state.in_flight.remove(&id).unwrap_or(false);
            if state
                .retries
                .get(&id)
                .is_some_and(|retry| retry.scheduled_ms == info.scheduled_ms)
            {
                state.retries.remove(&id);
            }
            match &result {
                Ok(()) => state.counters.fired_total += 1,
                Err(_) => state.counters.failures_total += 1,
            }
            recheck
        };
        if let Err(error) = result {
            // A handler that failed after changing or deleting its alarm gets no retry: its
            // change stands, as in the hosted runtime.
            if stored == Some(info.scheduled_ms) && !self.shutdown.is_requested() {
                self.retry_or_give_up(id, info, &error);
                return;
            }
        }
        if let (true, Some(time_ms)) = (recheck, stored) {
            self.insert(deadline_of(time_ms), id);
        }
    }

    fn retry_or_give_up(&self, id: ObjectId, info: AlarmInfo, error: &EventError) {
        if info.retry_count >= self.config.retries_max {
            tracing::warn!(object = %id, %error, retries = info.retry_count, "alarm given up");
            self.state.borrow_mut().counters.given_up_total += 1;
            return;
        }
        let delay_ms = self
            .config
            .retry_first_delay_ms
            .saturating_mul(1 << info.retry_count.min(32));
        let attempt_at_ms = (wall_clock_micros() / 1_000).saturating_add(delay_ms);
        let retry = Retry {
            scheduled_ms: info.scheduled_ms,
            retry_count: info.retry_count + 1,
            attempt_at_ms,
        };
        tracing::debug!(object = %id, %error, delay_ms, "alarm failed, retrying");
        {
            let mut state = self.state.borrow_mut();
            state.retries.insert(id, retry);
            state.counters.retries_total += 1;
        }
        self.insert(attempt_at_ms, id);
    }
}

/// One delivery, in a task of its own so that a slow handler delays no other alarm.
async fn deliver(scheduler: Rc<AlarmScheduler>, class: String, id: ObjectId, info: AlarmInfo) {
    let result = scheduler.host.deliver_alarm(&class, id, info).await;
    scheduler.finish(id, info, result);
    scheduler.start_deliveries();
}

/// The driver loop of one core.
async fn drive(scheduler: Rc<AlarmScheduler>) {
    let mut due = Vec::new();
    while !scheduler.shutdown.is_requested() {
        let now_ms = wall_clock_micros() / 1_000;
        scheduler.take_due(now_ms, &mut due);
        scheduler.start_deliveries();
        let wake_ms = {
            let mut state = scheduler.state.borrow_mut();
            let latest_ms = now_ms.saturating_add(scheduler.config.sleep_max_ms);
            let wake_ms = state
                .wheel
                .next_deadline_ms()
                .map_or(latest_ms, |next| next.min(latest_ms));
            state.armed_ms = Some(wake_ms);
            wake_ms
        };
        let sleep_micros = wake_ms
            .saturating_mul(1_000)
            .saturating_sub(wall_clock_micros());
        if sleep_micros > 0 {
            let timer = glommio::timer::sleep(Duration::from_micros(sleep_micros));
            futures_lite::future::or(timer, scheduler.wakeup.wait()).await;
        }
        scheduler.state.borrow_mut().armed_ms = None;
    }
    scheduler.running.set(false);
}

/// The wheel's time: the wall clock, since alarms are set in milliseconds since the epoch.
fn wall_clock_micros() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_micros() as u64)
}

/// The wheel deadline of an alarm time; times before the epoch are simply due.
fn deadline_of(time_ms: i64) -> u64 {
    time_ms.max(0) as u64
}
