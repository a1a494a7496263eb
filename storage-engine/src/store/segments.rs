//! The table of segment files: their names, open handles and sizes.
//!
//! Log segments (`log-{id:016x}`) receive group commits; base segments (`base-{id:016x}`) are
//! written by compaction. Both kinds share one id counter, so an id names one file and an
//! index entry needs only the id (a u32) to find its file.

use std::collections::BTreeMap;
use std::rc::Rc;

use crate::DiskFile;

pub const MANIFEST_NAME: &str = "MANIFEST";
pub const MANIFEST_TMP_NAME: &str = "MANIFEST.tmp";
pub const CHECKPOINT_NAME: &str = "CHECKPOINT";
pub const CHECKPOINT_TMP_NAME: &str = "CHECKPOINT.tmp";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SegmentKind {
    Log,
    Base,
}

pub fn segment_file_name(kind: SegmentKind, id: u64) -> String {
    match kind {
        SegmentKind::Log => format!("log-{id:016x}"),
        SegmentKind::Base => format!("base-{id:016x}"),
    }
}

/// Recognises a segment file name; anything else in the directory is not ours.
pub fn parse_segment_file_name(name: &str) -> Option<(SegmentKind, u64)> {
    let (kind, hex) = if let Some(hex) = name.strip_prefix("log-") {
        (SegmentKind::Log, hex)
    } else {
        (SegmentKind::Base, name.strip_prefix("base-")?)
    };
    if hex.len() != 16 {
        return None;
    }
    u64::from_str_radix(hex, 16).ok().map(|id| (kind, id))
}

/// One segment file the store reads from.
pub struct Segment {
    pub kind: SegmentKind,
    /// Kept open for the store's life: reads of large values go through it, and a read in
    /// flight keeps its own clone, so unlinking the file during compaction is safe.
    pub file: Rc<dyn DiskFile>,
    /// Bytes the file takes on disk: whole blocks, padding included. Reported as disk use.
    pub written_bytes: u64,
    /// Bytes of its records without padding (header plus payload, the `length` of each
    /// record): what the dead bytes are counted from. A group commit of a few small batches
    /// is far less than the 4 KiB block it pads to, and counting the padding made compaction
    /// run ~10x as often as the payload asked for; compaction cannot reclaim padding anyway,
    /// since every new record is padded again.
    pub record_bytes: u64,
}

/// Every segment the index may point into, by id.
#[derive(Default)]
pub struct Segments {
    pub by_id: BTreeMap<u64, Segment>,
}

impl Segments {
    pub fn file(&self, id: u32) -> Option<Rc<dyn DiskFile>> {
        self.by_id
            .get(&u64::from(id))
            .map(|segment| segment.file.clone())
    }

    /// Bytes on disk, padding included.
    pub fn written_bytes_total(&self) -> u64 {
        self.by_id
            .values()
            .map(|segment| segment.written_bytes)
            .sum()
    }

    /// Record bytes without padding: live plus dead.
    pub fn record_bytes_total(&self) -> u64 {
        self.by_id
            .values()
            .map(|segment| segment.record_bytes)
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_roundtrip() {
        let name = segment_file_name(SegmentKind::Base, 0x2a);
        assert_eq!(name, "base-000000000000002a");
        assert_eq!(
            parse_segment_file_name(&name),
            Some((SegmentKind::Base, 0x2a))
        );
        assert_eq!(parse_segment_file_name("log-12"), None);
        assert_eq!(parse_segment_file_name("MANIFEST"), None);
    }
}
