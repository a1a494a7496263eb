//! Reads: values come from the index when in memory, from their segment file otherwise, and
//! a value read from disk is checked against its crc every time.

use std::ops::Bound;
use std::rc::Rc;

use super::index::Entry;
use super::{io_error, ListOptions, ObjectData, Store};
use crate::{DiskFile, ObjectId, StoreError};

/// A value found in the index, taken out so no borrow is held while reading the disk.
pub(super) enum ValueRef {
    Bytes(Vec<u8>),
    Disk {
        file: Rc<dyn DiskFile>,
        place: ValuePlace,
        encryption: Option<std::sync::Arc<crate::Encryption>>,
    },
}

/// Where a value read back alone is: its record's start (for the nonce of an encrypted
/// store), the value's offset in the file, its length and crc (over the plaintext).
#[derive(Debug, Clone, Copy)]
pub(super) struct ValuePlace {
    pub record: u32,
    pub offset: u32,
    pub len: u32,
    pub crc: u32,
}

impl Store {
    /// Copies a value out of an index entry, or says where on disk it is.
    fn value_ref(&self, entry: &Entry) -> Result<ValueRef, StoreError> {
        Ok(match entry {
            Entry::Inline { value, .. } => ValueRef::Bytes(value.to_vec()),
            Entry::Pending { value, .. } => ValueRef::Bytes(value.to_vec()),
            Entry::OnDisk {
                segment,
                record,
                offset,
                len,
                crc,
            } => {
                let state = self.inner.state.borrow();
                let Some(file) = state.segments.file(*segment) else {
                    unreachable!("index points into segment {segment}, which is not open")
                };
                ValueRef::Disk {
                    file,
                    place: ValuePlace {
                        record: *record,
                        offset: *offset,
                        len: *len,
                        crc: *crc,
                    },
                    encryption: self.inner.config.encryption.clone(),
                }
            }
        })
    }

    async fn resolve(value: ValueRef) -> Result<Vec<u8>, StoreError> {
        match value {
            ValueRef::Bytes(bytes) => Ok(bytes),
            ValueRef::Disk {
                file,
                place,
                encryption,
            } => read_value(&*file, place, encryption.as_deref()).await,
        }
    }

    pub async fn get(&self, object: &ObjectId, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        let value = {
            let state = self.inner.state.borrow();
            match state.index.get(object, key) {
                None => return Ok(None),
                Some(Entry::Inline { value, .. }) => return Ok(Some(value.to_vec())),
                Some(entry) => {
                    let entry = entry.clone();
                    drop(state);
                    self.value_ref(&entry)?
                }
            }
        };
        Ok(Some(Store::resolve(value).await?))
    }

    pub async fn get_many(
        &self,
        object: &ObjectId,
        keys: &[Vec<u8>],
    ) -> Result<Vec<Option<Vec<u8>>>, StoreError> {
        let mut values = Vec::with_capacity(keys.len());
        for key in keys {
            values.push(self.get(object, key).await?);
        }
        Ok(values)
    }

    pub async fn list(
        &self,
        object: &ObjectId,
        options: &ListOptions,
    ) -> Result<Vec<(Vec<u8>, Vec<u8>)>, StoreError> {
        let found = self.collect_range(object, options)?;
        let mut out = Vec::with_capacity(found.len());
        for (key, value) in found {
            out.push((key, Store::resolve(value).await?));
        }
        Ok(out)
    }

    /// The keys `options` selects, in order, with their values or value locations.
    pub(super) fn collect_range(
        &self,
        object: &ObjectId,
        options: &ListOptions,
    ) -> Result<Vec<(Vec<u8>, ValueRef)>, StoreError> {
        let limit = options.limit.unwrap_or(usize::MAX);
        if limit == 0 {
            return Ok(Vec::new());
        }
        let entries: Vec<(Vec<u8>, Entry)> = {
            let state = self.inner.state.borrow();
            let Some(object_state) = state.index.objects.get(object) else {
                return Ok(Vec::new());
            };
            let prefix_end = options.prefix.as_deref().and_then(prefix_successor);
            let Some((lower, upper)) = bounds(options, prefix_end.as_deref()) else {
                return Ok(Vec::new());
            };
            let range = object_state.keys.range(lower, upper);
            let prefix = options.prefix.as_deref().unwrap_or(&[]);
            // The index's own item type, spelled out so both directions share the closures.
            #[allow(clippy::borrowed_box)]
            let selected = |(key, _): &(&Box<[u8]>, &Entry)| key.starts_with(prefix);
            #[allow(clippy::borrowed_box)]
            let owned = |(key, entry): (&Box<[u8]>, &Entry)| (key.to_vec(), entry.clone());
            if options.reverse {
                range
                    .rev()
                    .take_while(selected)
                    .take(limit)
                    .map(owned)
                    .collect()
            } else {
                range.take_while(selected).take(limit).map(owned).collect()
            }
        };
        entries
            .into_iter()
            .map(|(key, entry)| Ok((key, self.value_ref(&entry)?)))
            .collect()
    }

    /// The keys of `object` that start with `prefix`, in key order, at most `limit`, without
    /// their values (read from the index alone).
    pub fn keys_with_prefix(&self, object: &ObjectId, prefix: &[u8], limit: usize) -> Vec<Vec<u8>> {
        let state = self.inner.state.borrow();
        let Some(found) = state.index.objects.get(object) else {
            return Vec::new();
        };
        found
            .keys
            .range(
                std::ops::Bound::Included(prefix),
                std::ops::Bound::Unbounded,
            )
            .take_while(|(key, _)| key.starts_with(prefix))
            .take(limit)
            .map(|(key, _)| key.to_vec())
            .collect()
    }

    pub async fn load_object(&self, object: &ObjectId) -> Result<ObjectData, StoreError> {
        self.load_object_except(object, |_| false).await
    }

    /// `load_object`, but the keys `skip_value` picks come with an empty value, unread (on
    /// disk or in memory): for keys whose values the caller needs only later, if at all.
    pub async fn load_object_except(
        &self,
        object: &ObjectId,
        skip_value: impl Fn(&[u8]) -> bool,
    ) -> Result<ObjectData, StoreError> {
        let alarm_ms = self.alarm(object);
        let found = self.collect_range(object, &ListOptions::default())?;
        let (skipped, read): (Vec<_>, Vec<_>) =
            found.into_iter().partition(|(key, _)| skip_value(key));
        let mut entries = Store::resolve_all(read).await?;
        for (key, _) in skipped {
            entries.insert(key, Vec::new());
        }
        Ok(ObjectData { entries, alarm_ms })
    }

    /// The values of `found`, by key. Values on disk are read `LOAD_READS_IN_FLIGHT_MAX` at a
    /// time rather than one after another: an object of many values (a SQL database is one
    /// value per 4 KiB page) would otherwise wait for one disk round trip per value.
    pub(super) async fn resolve_all(
        found: Vec<(Vec<u8>, ValueRef)>,
    ) -> Result<std::collections::BTreeMap<Vec<u8>, Vec<u8>>, StoreError> {
        let mut entries = std::collections::BTreeMap::new();
        let mut found = found.into_iter().peekable();
        while found.peek().is_some() {
            let chunk: Vec<(Vec<u8>, ValueRef)> =
                found.by_ref().take(LOAD_READS_IN_FLIGHT_MAX).collect();
            let (keys, values): (Vec<Vec<u8>>, Vec<ValueRef>) = chunk.into_iter().unzip();
            let reads = values
                .into_iter()
                .map(|value| Box::pin(Store::resolve(value)));
            let values = JoinAll::new(reads.collect()).await;
            for (key, value) in keys.into_iter().zip(values) {
                entries.insert(key, value?);
            }
        }
        Ok(entries)
    }
}

/// Reads `load_object` keeps in flight at once.
const LOAD_READS_IN_FLIGHT_MAX: usize = 256;

/// Polls every future until all are done; their outputs in order.
struct JoinAll<F: std::future::Future + Unpin> {
    /// The futures, `None` once done.
    futures: Vec<Option<F>>,
    /// Their outputs, `None` until done.
    outputs: Vec<Option<F::Output>>,
}

impl<F: std::future::Future + Unpin> JoinAll<F> {
    fn new(futures: Vec<F>) -> JoinAll<F> {
        let outputs = futures.iter().map(|_| None).collect();
        JoinAll {
            futures: futures.into_iter().map(Some).collect(),
            outputs,
        }
    }
}

impl<F: std::future::Future + Unpin> std::future::Future for JoinAll<F>
where
    F::Output: Unpin,
{
    type Output = Vec<F::Output>;

    fn poll(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Vec<F::Output>> {
        let this = self.get_mut();
        let mut pending = false;
        for (slot, output) in this.futures.iter_mut().zip(this.outputs.iter_mut()) {
            if let Some(future) = slot {
                match std::pin::Pin::new(future).poll(cx) {
                    std::task::Poll::Ready(value) => {
                        *output = Some(value);
                        *slot = None;
                    }
                    std::task::Poll::Pending => pending = true,
                }
            }
        }
        if pending {
            return std::task::Poll::Pending;
        }
        std::task::Poll::Ready(this.outputs.iter_mut().filter_map(Option::take).collect())
    }
}

/// The smallest key above every key that starts with `prefix`: the prefix without its
/// trailing 0xff bytes, last byte incremented. `None` when there is none (no bytes below 0xff).
fn prefix_successor(prefix: &[u8]) -> Option<Vec<u8>> {
    let last = prefix.iter().rposition(|byte| *byte != 0xff)?;
    let mut successor = prefix[..=last].to_vec();
    successor[last] += 1;
    Some(successor)
}

/// A lower and an upper bound on keys.
type KeyRange<'a> = (Bound<&'a [u8]>, Bound<&'a [u8]>);

/// The key range `options` selects, or `None` when it is empty. The prefix raises the lower
/// bound and, through `prefix_end` (its successor), lowers the upper one, so a reverse list
/// starts inside the prefix rather than at the object's last key.
fn bounds<'a>(options: &'a ListOptions, prefix_end: Option<&'a [u8]>) -> Option<KeyRange<'a>> {
    let mut lower: Bound<&[u8]> = Bound::Unbounded;
    let candidates = [
        options.prefix.as_deref().map(Bound::Included),
        options.start.as_deref().map(Bound::Included),
        options.start_after.as_deref().map(Bound::Excluded),
    ];
    for candidate in candidates.into_iter().flatten() {
        lower = match (lower, candidate) {
            (Bound::Unbounded, new) => new,
            (
                old @ (Bound::Included(a) | Bound::Excluded(a)),
                new @ (Bound::Included(b) | Bound::Excluded(b)),
            ) => {
                if b > a || (b == a && matches!(new, Bound::Excluded(_))) {
                    new
                } else {
                    old
                }
            }
            (old, Bound::Unbounded) => old,
        };
    }
    let upper = match (options.end.as_deref(), prefix_end) {
        (Some(end), Some(prefix_end)) => Some(end.min(prefix_end)),
        (end, prefix_end) => end.or(prefix_end),
    };
    let upper: Bound<&[u8]> = upper.map_or(Bound::Unbounded, Bound::Excluded);
    // BTreeMap::range panics on an inverted range; such a range is simply empty.
    if let (Bound::Included(a) | Bound::Excluded(a), Bound::Excluded(b)) = (lower, upper) {
        if a >= b {
            return None;
        }
    }
    Some((lower, upper))
}

/// Reads one value from its segment and checks its length and crc; in an encrypted store,
/// reads its record's key id and nonce too and decrypts it first.
pub(super) async fn read_value(
    file: &dyn DiskFile,
    place: ValuePlace,
    encryption: Option<&crate::Encryption>,
) -> Result<Vec<u8>, StoreError> {
    let ValuePlace {
        record,
        offset,
        len,
        crc,
    } = place;
    let mut bytes = file
        .read_at(u64::from(offset), len as usize)
        .await
        .map_err(|source| io_error("read", file.name(), source))?;
    let corruption = |reason: String| StoreError::Corruption {
        file: file.name().to_string(),
        offset: u64::from(offset),
        reason,
    };
    if bytes.len() != len as usize {
        return Err(corruption(format!(
            "value of {len} bytes, only {} readable",
            bytes.len()
        )));
    }
    if let Some(encryption) = encryption {
        let prefix_at = u64::from(record) + crate::codec::RECORD_HEADER_BYTES as u64;
        let prefix = file
            .read_at(prefix_at, crate::cipher::PREFIX_BYTES)
            .await
            .map_err(|source| io_error("read", file.name(), source))?;
        let ciphertext_start = prefix_at + crate::cipher::PREFIX_BYTES as u64;
        let position = u64::from(offset)
            .checked_sub(ciphertext_start)
            .ok_or_else(|| corruption("value before its record's ciphertext".to_string()))?;
        encryption
            .decrypt_at(&prefix, position, &mut bytes)
            .map_err(|error| corruption(format!("cannot decrypt the value: {error:?}")))?;
    }
    let found = match encryption {
        Some(encryption) => encryption.value_tag(&bytes),
        None => crc32fast::hash(&bytes),
    };
    if found != crc {
        return Err(corruption(format!(
            "value crc {found:#010x}, index expects {crc:#010x}"
        )));
    }
    Ok(bytes)
}
