//! glommio's preemption with the vendored COOP_TASKRUN rings (vendor/README.md).
//!
//! With `IORING_SETUP_COOP_TASKRUN` a completion that needs task work (the preempt timer, a
//! socket becoming readable) is not posted to the latency ring's CQ until the executor thread
//! enters the kernel, and a task queue that spins never does. `need_preempt()` therefore has to
//! read `IORING_SQ_TASKRUN` in the SQ ring's flags as well as the CQ head and tail. These tests
//! run plain glommio executors, no stead code.

use std::io::Write;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use glommio::net::TcpListener;
use glommio::{Latency, LocalExecutorBuilder, Placement, Shares};

/// How long a spinning loop waits before it gives up and fails the test instead of hanging.
const GIVE_UP: Duration = Duration::from_secs(5);

/// A task queue that spins (calling `yield_if_needed`) is made to give way to another task queue
/// by the preempt timer: within a few timer periods, not never.
#[test]
fn a_spinning_task_queue_gives_way_to_another_within_the_preempt_timer() {
    let preempt = Duration::from_millis(100);
    let waited = LocalExecutorBuilder::new(Placement::Unbound)
        .preempt_timer(preempt)
        .make()
        .expect("executor")
        .run(async move {
            let ex = glommio::executor();
            let busy_queue = ex.create_task_queue(Shares::default(), Latency::NotImportant, "busy");
            let other_queue =
                ex.create_task_queue(Shares::default(), Latency::NotImportant, "other");
            let other_ran: Rc<std::cell::Cell<Option<Instant>>> = Rc::default();
            let flag = other_ran.clone();
            let busy = glommio::spawn_local_into(
                async move {
                    // Spawned from inside the spinning queue, so the other queue can only run
                    // once this one is preempted.
                    let started = Instant::now();
                    let flag_for_other = flag.clone();
                    glommio::spawn_local_into(
                        async move { flag_for_other.set(Some(Instant::now())) },
                        other_queue,
                    )
                    .expect("spawn into the other queue")
                    .detach();
                    while flag.get().is_none() && started.elapsed() < GIVE_UP {
                        glommio::yield_if_needed().await;
                    }
                    flag.get().map(|ran| ran - started)
                },
                busy_queue,
            )
            .expect("spawn into the busy queue");
            busy.await
        });
    let waited = waited.expect("the other task queue never ran while one spun");
    // One preempt period, plus slack for a loaded machine; far below GIVE_UP.
    assert!(
        waited < Duration::from_secs(1),
        "the other task queue waited {waited:?} with a {preempt:?} preempt timer"
    );
}

/// A latency-ring completion caused by another thread (on another CPU, so no interrupt reaches
/// the spinning thread) must show in `need_preempt()` at once. The completion is a `peek`, which
/// glommio issues as a recv on the latency ring (plain reads wait for readiness on the main
/// ring, which `need_preempt` does not watch, with or without COOP_TASKRUN): the kernel flags the pending completion with
/// `IORING_SQ_TASKRUN` before the writer's `write` returns. A check that read only the CQ would
/// see it late, at the next interrupt that happens to land on this thread's CPU (a scheduler
/// tick, up to 4 ms at HZ=250), so the first check after the write would almost always be false.
#[test]
fn a_completion_posted_from_another_thread_shows_in_need_preempt_at_once() {
    // The writer must run on another CPU than the spinning executor: on the same CPU it would
    // only run once the spinner is switched out, and switching back in runs the pending task
    // work, which would hide a CQ-only check's blindness.
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    if cpus < 2 {
        eprintln!("skipped: needs two CPUs, has {cpus}");
        return;
    }
    // Long enough that the preempt timer cannot be what sets need_preempt here.
    let preempt = Duration::from_secs(30);
    let outcome = LocalExecutorBuilder::new(Placement::Fixed(0))
        .preempt_timer(preempt)
        .make()
        .expect("executor")
        .run(async move {
            let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
            let addr = listener.local_addr().expect("local addr");
            let (go_tx, go_rx) = mpsc::channel::<()>();
            let written = Arc::new(AtomicBool::new(false));
            let written_by_writer = written.clone();
            // A glommio executor only to pin the thread; it runs plain blocking code.
            let writer = LocalExecutorBuilder::new(Placement::Fixed(1))
                .spawn(move || async move {
                    let mut socket = std::net::TcpStream::connect(addr).expect("connect");
                    go_rx.recv().expect("go signal");
                    socket.write_all(b"x").expect("write");
                    written_by_writer.store(true, Ordering::Release);
                    // Keep the socket open until the reader has had its byte.
                    let _ = go_rx.recv();
                })
                .expect("writer executor on CPU 1");
            let stream = listener.accept().await.expect("accept");
            let reader = glommio::spawn_local(async move {
                let mut byte = [0u8; 1];
                stream.peek(&mut byte).await.expect("peek")
            });
            // A trip through the reactor so that the peek is armed in the kernel (nothing
            // to read yet): its completion will come from the writer's CPU.
            glommio::timer::sleep(Duration::from_millis(20)).await;
            let ex = glommio::executor();
            let before = ex.need_preempt();

            go_tx.send(()).expect("writer alive");
            let spin_start = Instant::now();
            while !written.load(Ordering::Acquire) && spin_start.elapsed() < GIVE_UP {
                std::hint::spin_loop();
            }
            let at_once = ex.need_preempt();
            // Only for the failure message: how long a CQ-only check would have taken.
            let seen = Instant::now();
            while !ex.need_preempt() && seen.elapsed() < GIVE_UP {
                std::hint::spin_loop();
            }
            let late_by = seen.elapsed();

            drop(go_tx);
            assert_eq!(reader.await, 1, "the reader gets the byte");
            writer.join().expect("writer thread");
            (before, written.load(Ordering::Acquire), at_once, late_by)
        });
    let (before, written, at_once, late_by) = outcome;
    assert!(!before, "need_preempt was already true before the write");
    assert!(
        written,
        "the writer thread did not write within {GIVE_UP:?}"
    );
    assert!(
        at_once,
        "need_preempt() missed a completion pending in task work; it turned true {late_by:?} later"
    );
}
