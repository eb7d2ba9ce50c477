//! This process's latest commits, kept in memory for the followers.
//!
//! Every follower in the server (hot counts, live billing, the NATS
//! publisher) reads each event the appender commits, usually within a
//! batch of its commit. Reading them back from the store cost the server
//! about 8% of its CPU under load (three range queries per batch, each row
//! decoded), besides the reads in PostgreSQL; the appender already holds them.
//!
//! The rule that keeps this safe: only committed events enter, in the
//! appender's commit order, and the kept events are always one run of
//! consecutive positions. A batch that does not continue the run (another
//! replica wrote in between, or a batch whose commit failed left a hole)
//! starts a new run. A reader is served from memory only when the run holds
//! the very next position it asks for; otherwise it reads the store, as
//! before. So nothing is ever skipped, and what a follower sees is exactly
//! what was committed.

use seatledger_schema::RecordedEvent;
use std::collections::VecDeque;
use std::sync::Arc;

/// Events kept by default: about 10 MiB (~1.2 KiB an event as a value
/// tree), more than the followers fall behind by under load (live billing,
/// the furthest behind, catches up every 500 ms: ~7k events at 13k/s). A
/// follower further behind reads the log, as it did before.
pub const RECENT_EVENTS_DEFAULT: usize = 8_192;

/// The latest run of consecutive committed positions of one partition,
/// as the batches that committed them.
#[derive(Debug)]
pub(crate) struct RecentEvents {
    batches: VecDeque<Arc<[RecordedEvent]>>,
    len: usize,
    capacity: usize,
}

impl RecentEvents {
    pub(crate) fn new(capacity: usize) -> Self {
        RecentEvents {
            batches: VecDeque::new(),
            len: 0,
            capacity,
        }
    }

    fn first(&self) -> Option<&RecordedEvent> {
        self.batches.front().and_then(|batch| batch.first())
    }

    fn last(&self) -> Option<&RecordedEvent> {
        self.batches.back().and_then(|batch| batch.last())
    }

    /// Keeps a committed batch (consecutive positions of one partition, in
    /// order), dropping the oldest batches beyond the capacity.
    pub(crate) fn push(&mut self, batch: Vec<RecordedEvent>) {
        let Some(first) = batch.first() else {
            return;
        };
        let continues = match self.last() {
            Some(last) => {
                last.partition == first.partition
                    && last.position.checked_add(1) == Some(first.position)
            }
            None => true,
        };
        let consecutive = batch.windows(2).all(|pair| {
            pair[0].partition == pair[1].partition && pair[0].position + 1 == pair[1].position
        });
        if !continues || !consecutive {
            self.batches.clear();
            self.len = 0;
            if !consecutive {
                return;
            }
        }
        self.len += batch.len();
        self.batches.push_back(batch.into());
        while self.len > self.capacity {
            match self.batches.pop_front() {
                Some(dropped) => self.len -= dropped.len(),
                None => break,
            }
        }
    }

    /// The batches holding `partition`'s events from `after + 1` to at most
    /// `through`, if the run holds position `after + 1`; `None` sends the
    /// reader to the store. The first and last batches may hold events
    /// outside the range: [`in_range`] picks them out.
    pub(crate) fn covering(
        &self,
        partition: i16,
        after: i64,
        through: i64,
    ) -> Option<Vec<Arc<[RecordedEvent]>>> {
        let first = self.first()?;
        let last = self.last()?;
        let next = after.checked_add(1)?;
        if first.partition != partition
            || next < first.position
            || next > last.position
            || through < next
        {
            return None;
        }
        Some(
            self.batches
                .iter()
                .filter(|batch| {
                    batch.last().is_some_and(|e| e.position >= next)
                        && batch.first().is_some_and(|e| e.position <= through)
                })
                .cloned()
                .collect(),
        )
    }
}

/// The events of `batches` with `after < position <= through`, in order.
pub fn in_range(
    batches: &[Arc<[RecordedEvent]>],
    after: i64,
    through: i64,
) -> impl Iterator<Item = &RecordedEvent> {
    batches
        .iter()
        .flat_map(|batch| batch.iter())
        .filter(move |event| event.position > after && event.position <= through)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use seatledger_schema::{ChainHash, Metadata, OrgId, Timestamp};
    use uuid::Uuid;

    fn event(position: i64) -> RecordedEvent {
        RecordedEvent {
            partition: 0,
            position,
            event_id: Uuid::nil(),
            stream_id: "license-x".into(),
            stream_version: position,
            org_id: OrgId::nil(),
            event_type: "SeatHeartbeat".into(),
            schema_version: 1,
            payload: serde_json::json!({ "n": position }),
            metadata: Metadata::default(),
            occurred_at: Timestamp::from_micros_saturating(position),
            recorded_at: Timestamp::from_micros_saturating(position),
            prev_hash: ChainHash::GENESIS,
            hash: ChainHash::GENESIS,
        }
    }

    fn batch(from: i64, len: i64) -> Vec<RecordedEvent> {
        (from..from + len).map(event).collect()
    }

    fn positions(recent: &RecentEvents, after: i64, through: i64) -> Option<Vec<i64>> {
        let batches = recent.covering(0, after, through)?;
        Some(
            in_range(&batches, after, through)
                .map(|e| e.position)
                .collect(),
        )
    }

    #[test]
    fn serves_only_ranges_that_start_inside_the_run() {
        let mut recent = RecentEvents::new(100);
        recent.push(batch(11, 5));
        recent.push(batch(16, 5));
        assert_eq!(positions(&recent, 10, 20), Some((11..=20).collect()));
        assert_eq!(positions(&recent, 12, 17), Some((13..=17).collect()));
        assert_eq!(positions(&recent, 15, 99), Some((16..=20).collect()));
        assert_eq!(positions(&recent, 9, 20), None, "position 10 is not held");
        assert_eq!(positions(&recent, 20, 30), None, "nothing after the run");
        assert_eq!(recent.covering(1, 10, 20), None, "another partition");
    }

    #[test]
    fn a_batch_that_does_not_continue_the_run_starts_a_new_one() {
        let mut recent = RecentEvents::new(100);
        recent.push(batch(1, 5));
        recent.push(batch(8, 3));
        assert_eq!(
            positions(&recent, 0, 10),
            None,
            "positions 6 and 7 were not committed here"
        );
        assert_eq!(positions(&recent, 7, 10), Some(vec![8, 9, 10]));
        let mut gapped = batch(11, 3);
        gapped.remove(1);
        recent.push(gapped);
        assert_eq!(
            positions(&recent, 7, 20),
            None,
            "a batch with a hole is not kept"
        );
    }

    #[test]
    fn the_oldest_batches_go_past_the_capacity() {
        let mut recent = RecentEvents::new(10);
        for from in (1..=40).step_by(4) {
            recent.push(batch(from, 4));
        }
        assert!(recent.len <= 10);
        assert_eq!(positions(&recent, 32, 40), Some((33..=40).collect()));
        assert_eq!(positions(&recent, 20, 40), None);
    }

    proptest! {
        /// Whatever the batches and gaps, a served range is exactly the
        /// committed events of that range, in order, with none missing.
        #[test]
        fn what_is_served_is_what_was_committed(
            steps in prop::collection::vec((0i64..3, 1i64..20), 1..40),
            capacity in 1usize..64,
            after_back in 0i64..80,
            len in 0i64..80,
        ) {
            let mut recent = RecentEvents::new(capacity);
            let mut next = 1;
            let mut committed = Vec::new();
            for (gap, size) in steps {
                next += gap;
                recent.push(batch(next, size));
                committed.extend(next..next + size);
                next += size;
            }
            let after = (next - 1 - after_back).max(0);
            let through = after + len;
            if let Some(served) = positions(&recent, after, through) {
                let expected: Vec<i64> = committed
                    .iter()
                    .copied()
                    .filter(|p| *p > after && *p <= through)
                    .collect();
                prop_assert!(!served.is_empty());
                prop_assert_eq!(served[0], after + 1);
                prop_assert_eq!(&served[..], &expected[..served.len()]);
                prop_assert!(served.windows(2).all(|w| w[0] + 1 == w[1]));
            }
        }
    }
}
