//! The process that `tests/kill.rs` kills with SIGKILL: it opens the store in the directory
//! given as its one argument and commits from many tasks at once, forever, printing one line
//! `<task> <step> <seq>` to stdout after each commit's `Durable` resolves, and only then.
//!
//! The workload (`tests/crash_workload`) lets a reader tell a whole batch from a partial one.
//! On start each task resumes after the step the store holds. Segments are small and
//! compaction eager, so kills also land inside segment rotation and compaction.

#[path = "../../tests/crash_workload/mod.rs"]
mod crash_workload;

use std::io::Write;
use std::process::ExitCode;

use crash_workload::{batch, object, step_of, TASKS};
use glommio::channels::local_channel;
use glommio::{LocalExecutorBuilder, Placement};
use stead_storage::{Store, StoreConfig, StoreError};

fn config(dir: &str) -> StoreConfig {
    let mut config = StoreConfig::new(dir);
    config.segment_bytes_max = 64 * 1024;
    config.inline_value_bytes_max = 64;
    config.compaction_dead_bytes_min = 256 * 1024;
    config.compaction_dead_percent_min = 50;
    config.compaction_automatic = true;
    // The parent's encrypted runs (`STEAD_STORAGE_TEST_ENCRYPTION=1`) use the same key.
    if std::env::var("STEAD_STORAGE_TEST_ENCRYPTION").is_ok_and(|value| value == "1") {
        let keys = vec![(0x5EED, [0x42; stead_storage::ENCRYPTION_KEY_BYTES])];
        config.encryption = stead_storage::Encryption::new(keys).map(std::sync::Arc::new);
    }
    config
}

/// The step after the last one the store holds for `task`.
async fn next_step(store: &Store, task: u8) -> Result<u64, StoreError> {
    let data = store.load_object(&object(task)).await?;
    Ok(step_of(&data).map_or(0, |step| step + 1))
}

/// Commits step after step; returns only on an error.
async fn commit_forever(store: Store, task: u8) -> String {
    let mut step = match next_step(&store, task).await {
        Ok(step) => step,
        Err(error) => return format!("task {task}: reading its step: {error}"),
    };
    loop {
        let durable = match store.commit(&object(task), batch(task, step)) {
            Ok((seq, durable)) => durable.await.map(|()| seq),
            Err(error) => Err(error),
        };
        let seq = match durable {
            Ok(seq) => seq,
            Err(error) => return format!("task {task}: commit of step {step}: {error}"),
        };
        // One write per line: a line to a pipe is written whole or not at all.
        let line = format!("{task} {step} {seq}\n");
        if let Err(error) = std::io::stdout().write_all(line.as_bytes()) {
            return format!("task {task}: stdout: {error}");
        }
        step += 1;
    }
}

async fn serve(dir: String) -> String {
    let store = match Store::open(config(&dir)).await {
        Ok(store) => store,
        Err(error) => return format!("open {dir}: {error}"),
    };
    // Every task runs until the process is killed; the first to stop says why, and the
    // process exits so the test sees the failure instead of a quiet task.
    let (errors, first_error) = local_channel::new_bounded(usize::from(TASKS));
    let errors = std::rc::Rc::new(errors);
    for task in 0..TASKS {
        let (store, errors) = (store.clone(), errors.clone());
        glommio::spawn_local(async move {
            let error = commit_forever(store, task).await;
            // The receiver lives until the first error arrives; later ones have no reader.
            let _ = errors.send(error).await;
        })
        .detach();
    }
    first_error
        .recv()
        .await
        .unwrap_or_else(|| "every task stopped without a word".to_string())
}

fn main() -> ExitCode {
    let mut args = std::env::args().skip(1);
    let (Some(dir), None) = (args.next(), args.next()) else {
        eprintln!("usage: stead-storage-crash-child <store directory>");
        return ExitCode::from(2);
    };
    let executor = LocalExecutorBuilder::new(Placement::Unbound)
        .io_memory(256 * 1024)
        .ring_depth(64)
        .make();
    let error = match executor {
        Ok(executor) => executor.run(serve(dir)),
        Err(error) => format!("executor: {error}"),
    };
    eprintln!("stead-storage-crash-child: {error}");
    ExitCode::FAILURE
}
