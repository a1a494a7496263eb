//! The workload of `stead-storage-crash-child`, shared with `tests/kill.rs` that checks it: the
//! child includes this file by path, so the two cannot drift apart.
//!
//! Task `t` owns object `[t; 32]`. Its step `i` is one batch that sets `n` and `check` to `i`,
//! puts a large value derived from `(t, i)`, deletes `k{i-1}`, puts `k{i}` and sets the alarm
//! to `i`. Every step rewrites the whole object, so the object after step `i` is known exactly
//! and a partial batch shows.

// Each user takes its own part of this module.
#![allow(dead_code)]

use stead_storage::{Batch, ObjectData, ObjectId};

/// Committing tasks, one object each: enough to make group commit batch several commits.
pub const TASKS: u8 = 16;

/// The object task `task` owns.
pub fn object(task: u8) -> ObjectId {
    [task; 32]
}

/// The large value of step `step` of task `task`: longer than the child's 64-byte inline
/// limit, so it is read back from disk, and different at every step.
pub fn big_value(task: u8, step: u64) -> Vec<u8> {
    let len = 200 + (step as usize * 37 + usize::from(task) * 11) % 2800;
    (0..len)
        .map(|i| (step as usize * 13 + usize::from(task) * 7 + i) as u8)
        .collect()
}

/// The batch of step `step` of task `task`.
pub fn batch(task: u8, step: u64) -> Batch {
    let mut batch = Batch::new();
    batch.put("n", step.to_le_bytes().to_vec());
    batch.put("check", step.to_le_bytes().to_vec());
    batch.put("big", big_value(task, step));
    if let Some(previous) = step.checked_sub(1) {
        batch.delete(format!("k{previous}"));
    }
    batch.put(format!("k{step}"), format!("step {step}"));
    batch.set_alarm(step as i64);
    batch
}

/// The object of task `task` after step `step`, whatever came before.
pub fn object_after(task: u8, step: u64) -> ObjectData {
    let mut data = ObjectData::default();
    data.entries
        .insert(b"n".to_vec(), step.to_le_bytes().to_vec());
    data.entries
        .insert(b"check".to_vec(), step.to_le_bytes().to_vec());
    data.entries.insert(b"big".to_vec(), big_value(task, step));
    let key = format!("k{step}").into_bytes();
    data.entries
        .insert(key, format!("step {step}").into_bytes());
    data.alarm_ms = Some(step as i64);
    data
}

/// The step stored in an object's `n`, if it has one.
pub fn step_of(data: &ObjectData) -> Option<u64> {
    let bytes = data.entries.get(b"n".as_slice())?;
    Some(u64::from_le_bytes(
        <[u8; 8]>::try_from(bytes.as_slice()).ok()?,
    ))
}
