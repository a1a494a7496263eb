//! Counters of one store and the power-of-two histograms behind them.

/// Counters of one store, for metrics and benchmarks.
#[derive(Clone, Debug, Default)]
pub struct StoreStats {
    pub commits_total: u64,
    /// Syncs: a group commit's durable write (one write with its flush) counts as one, as
    /// do the fdatasyncs of segment creation, zero fills and compaction.
    pub fdatasyncs_total: u64,
    pub bytes_written_total: u64,
    /// Zeros written ahead of the writer into log segments (`prepare`), not in the total above.
    pub prepared_bytes_total: u64,
    /// Sync latency: bucket i counts syncs of ≤ 2^i microseconds; the last bucket the rest.
    pub fdatasync_micros_buckets: [u64; 20],
    pub fdatasync_micros_sum: u64,
    /// Commits per fdatasync: bucket i counts groups of ≤ 2^i commits; the last bucket the rest.
    pub group_commits_buckets: [u64; 12],
    pub objects: u64,
    pub keys: u64,
    pub segments: u64,
    /// Record bytes (header plus payload, no padding) of puts that are still current.
    pub live_bytes: u64,
    /// Record bytes in the segments minus `live_bytes`: what compaction would reclaim, and
    /// what its trigger counts. Block padding is not in it.
    pub dead_bytes: u64,
    /// Bytes the segment files take on disk, block padding included.
    pub disk_bytes: u64,
    pub compactions_total: u64,
    /// Rounds whose durable write was issued while the round before it was still in flight.
    pub overlapped_rounds_total: u64,
    /// Torn tails recovery cut at open that held a record written beside the damaged round
    /// (see `DESIGN.md`, "Two rounds in flight").
    pub overlapped_tails_cut: u64,
    pub poisoned: bool,
    /// Whether the last open loaded the index checkpoint instead of replaying the bases.
    pub recovered_from_checkpoint: bool,
    /// Keys starting with `StoreConfig::counted_key_prefix`, and their key and value bytes.
    pub prefix_keys: u64,
    pub prefix_bytes: u64,
}

/// The bucket of `value` in a histogram whose bucket i holds values ≤ 2^i.
pub fn power_of_two_bucket(value: u64, buckets: usize) -> usize {
    let bucket = if value <= 1 {
        0
    } else {
        (64 - (value - 1).leading_zeros()) as usize
    };
    bucket.min(buckets - 1)
}

impl StoreStats {
    /// Counts one fdatasync of the log or of a compaction file.
    pub fn record_fdatasync(&mut self, micros: u64) {
        self.fdatasyncs_total += 1;
        self.fdatasync_micros_sum += micros;
        let buckets = self.fdatasync_micros_buckets.len();
        self.fdatasync_micros_buckets[power_of_two_bucket(micros, buckets)] += 1;
    }

    /// Counts one group commit of `commits` batches.
    pub fn record_group(&mut self, commits: u64) {
        let buckets = self.group_commits_buckets.len();
        self.group_commits_buckets[power_of_two_bucket(commits, buckets)] += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::power_of_two_bucket;

    #[test]
    fn buckets() {
        assert_eq!(power_of_two_bucket(0, 12), 0);
        assert_eq!(power_of_two_bucket(1, 12), 0);
        assert_eq!(power_of_two_bucket(2, 12), 1);
        assert_eq!(power_of_two_bucket(3, 12), 2);
        assert_eq!(power_of_two_bucket(4, 12), 2);
        assert_eq!(power_of_two_bucket(5, 12), 3);
        assert_eq!(power_of_two_bucket(1 << 40, 12), 11);
    }
}
