//! The live progress line (requests/s, errors, p99 so far), drawn on a terminal only.

use std::io::IsTerminal;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use super::stats::Live;

/// How often the line is redrawn.
const REFRESH_INTERVAL: Duration = Duration::from_millis(250);

/// A thread that redraws the line until stopped; nothing at all when stdout is not a terminal.
pub struct Progress {
    /// Tells the thread to clear the line and end.
    stop: Arc<AtomicBool>,
    /// The drawing thread, None when stdout is not a terminal.
    thread: Option<JoinHandle<()>>,
}

impl Progress {
    pub fn start(live: Arc<Live>, label: String) -> Progress {
        let stop = Arc::new(AtomicBool::new(false));
        if !std::io::stdout().is_terminal() {
            return Progress { stop, thread: None };
        }
        let thread_stop = stop.clone();
        let thread = std::thread::Builder::new()
            .name("stead-bench-progress".to_string())
            .spawn(move || draw(&live, &label, &thread_stop))
            .ok();
        Progress { stop, thread }
    }

    /// Clears the line and waits for the thread.
    pub fn finish(self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread {
            let _ = thread.join();
        }
    }
}

fn draw(live: &Live, label: &str, stop: &AtomicBool) {
    let bar = ProgressBar::with_draw_target(None, ProgressDrawTarget::stdout());
    if let Ok(style) = ProgressStyle::with_template("{elapsed:>4} {msg}") {
        bar.set_style(style);
    }
    let mut last = (Instant::now(), 0u64);
    // Ends when told to: the run itself is bounded in time.
    while !stop.load(Ordering::Relaxed) {
        std::thread::sleep(REFRESH_INTERVAL);
        let now = Instant::now();
        let completed = live.completed.load(Ordering::Relaxed);
        let rate = (completed - last.1) as f64 / now.duration_since(last.0).as_secs_f64();
        last = (now, completed);
        bar.set_message(format!(
            "{label}: {rate:>9.0} req/s  {completed} done  {} errors  p99 {:.3} ms",
            live.errors.load(Ordering::Relaxed),
            live.p99_micros() as f64 / 1000.0
        ));
        bar.tick();
    }
    bar.finish_and_clear();
}
