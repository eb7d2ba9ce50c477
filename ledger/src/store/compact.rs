//! Reading the log across its blocks and its row tail, and compaction,
//! which moves the oldest rows into blocks (docs/design.md §3, "Compact
//! storage").
//!
//! The log of a partition is a run of blocks followed by the row tail: each
//! event is in exactly one of them, and the boundary only ever moves
//! forward. Every reader asks the tail first, then the blocks for what lies
//! before the tail's first row. That order is what makes a read that races
//! a compaction whole: an event missing from the tail when it was read was
//! already in a committed block, because a compaction writes the block and
//! removes the rows in one transaction. Events read from both are kept once.

use super::blocks::{self, BlockRow, EncodedBlock};
use super::{hash_from, StoreError};
use seatledger_schema::{ChainHash, RecordedEvent};
use seatledger_schema::{OrgId, SessionId};
use sqlx::{PgConnection, SqliteConnection};

/// A connection of either backend, for statements whose text both accept.
pub(crate) enum Conn<'a> {
    Pg(&'a mut PgConnection),
    Lite(&'a mut SqliteConnection),
}

/// Runs `$body` with `$c` bound to the connection, whichever the backend.
macro_rules! on_conn {
    ($conn:expr, |$c:ident| $body:expr) => {
        match $conn {
            Conn::Pg($c) => $body,
            Conn::Lite($c) => $body,
        }
    };
}
pub(crate) use on_conn;

const BLOCK_COLUMNS: &str =
    "b.partition, b.first_position, b.last_position, b.prev_hash, b.last_hash, b.body";

/// Blocks fetched per statement while a reader walks them.
const BLOCKS_PER_FETCH: i64 = 4;

/// A block found through one of its keys, with the key's `upto`.
#[derive(sqlx::FromRow)]
struct KeyedBlock {
    upto: i64,
    #[sqlx(flatten)]
    block: BlockRow,
}

impl Conn<'_> {
    /// The first and last positions of the partition's row tail.
    async fn tail_bounds(
        &mut self,
        partition: i16,
    ) -> Result<(Option<i64>, Option<i64>), StoreError> {
        const SQL: &str = "SELECT min(position), max(position) FROM events WHERE partition = $1";
        Ok(on_conn!(self, |c| sqlx::query_as(SQL)
            .bind(partition)
            .fetch_one(&mut **c)
            .await?))
    }

    /// Up to `limit` blocks of the partition holding a position in
    /// `(after, through]`, by position.
    async fn blocks_between(
        &mut self,
        partition: i16,
        after: i64,
        through: i64,
        limit: i64,
    ) -> Result<Vec<BlockRow>, StoreError> {
        let sql = format!(
            "SELECT {BLOCK_COLUMNS} FROM event_blocks b WHERE b.partition = $1 \
             AND b.last_position > $2 AND b.first_position <= $3 ORDER BY b.first_position LIMIT $4"
        );
        Ok(on_conn!(self, |c| sqlx::query_as(&sql)
            .bind(partition)
            .bind(after)
            .bind(through)
            .bind(limit)
            .fetch_all(&mut **c)
            .await?))
    }

    /// Up to `limit` blocks of the partition carrying `key` with an `upto`
    /// above `after`, by `upto`.
    async fn blocks_keyed(
        &mut self,
        partition: i16,
        key: i64,
        after: i64,
        limit: i64,
    ) -> Result<Vec<KeyedBlock>, StoreError> {
        let sql = format!(
            "SELECT k.upto, {BLOCK_COLUMNS} FROM event_block_keys k \
             JOIN event_blocks b ON b.partition = k.partition AND b.first_position = k.first_position \
             WHERE k.key = $1 AND k.partition = $2 AND k.upto > $3 \
             ORDER BY k.upto, k.first_position LIMIT $4"
        );
        Ok(on_conn!(self, |c| sqlx::query_as(&sql)
            .bind(key)
            .bind(partition)
            .bind(after)
            .bind(limit)
            .fetch_all(&mut **c)
            .await?))
    }

    /// Fails with [`StoreError::Pruned`] when a read from after `after`
    /// needs events a pruned segment took out of the database.
    pub(crate) async fn refuse_pruned(
        &mut self,
        partition: i16,
        after: i64,
    ) -> Result<(), StoreError> {
        const SQL: &str = "SELECT max(last_position) FROM event_segments \
             WHERE partition = $1 AND pruned_at IS NOT NULL";
        let pruned: Option<i64> = on_conn!(self, |c| sqlx::query_scalar(SQL)
            .bind(partition)
            .fetch_one(&mut **c)
            .await?);
        match pruned {
            Some(pruned_through) if after < pruned_through => Err(StoreError::Pruned {
                partition,
                pruned_through,
            }),
            _ => Ok(()),
        }
    }

    /// The partition's last block.
    async fn last_block(&mut self, partition: i16) -> Result<Option<(i64, Vec<u8>)>, StoreError> {
        const SQL: &str = "SELECT last_position, last_hash FROM event_blocks \
             WHERE partition = $1 ORDER BY first_position DESC LIMIT 1";
        Ok(on_conn!(self, |c| sqlx::query_as(SQL)
            .bind(partition)
            .fetch_optional(&mut **c)
            .await?))
    }

    /// The partition's head when its row tail is empty: the end of its
    /// last block, or `(0, GENESIS)` for an empty log.
    pub(crate) async fn head_of_blocks(
        &mut self,
        partition: i16,
    ) -> Result<(i64, ChainHash), StoreError> {
        let found = match self.last_block(partition).await? {
            Some(last) => Some(last),
            None => self.pruned_through(partition).await?,
        };
        match found {
            Some((position, hash)) => Ok((position, hash_from(&hash, "last_hash")?)),
            None => Ok((0, ChainHash::GENESIS)),
        }
    }

    /// The hash of the event at `position`, from the block holding it.
    pub(crate) async fn block_hash_at(
        &mut self,
        partition: i16,
        position: i64,
    ) -> Result<Option<ChainHash>, StoreError> {
        let Some(block) = self
            .blocks_between(partition, position.saturating_sub(1), position, 1)
            .await?
            .pop()
        else {
            return Ok(None);
        };
        if block.last_position == position {
            return Ok(Some(hash_from(&block.last_hash, "last_hash")?));
        }
        let events: Vec<RecordedEvent> = block.decode()?;
        Ok(events
            .into_iter()
            .find(|event| event.position == position)
            .map(|event| event.hash))
    }

    /// `tail` (up to `limit` rows of `(after, through]`, as the row tail
    /// answered) completed with the blocks before its first row.
    pub(crate) async fn between<P, M>(
        &mut self,
        partition: i16,
        after: i64,
        through: i64,
        limit: usize,
        tail: Vec<RecordedEvent<P, M>>,
    ) -> Result<Vec<RecordedEvent<P, M>>, StoreError>
    where
        P: serde::de::DeserializeOwned,
        M: serde::de::DeserializeOwned,
    {
        let stop = match tail.first() {
            Some(first) if first.position == after.saturating_add(1) => return Ok(tail),
            Some(first) => (first.position - 1).min(through),
            None => through,
        };
        if stop > after {
            self.refuse_pruned(partition, after).await?;
        }
        let mut events = Vec::new();
        let mut cursor = after;
        while events.len() < limit && cursor < stop {
            let found = self
                .blocks_between(partition, cursor, stop, BLOCKS_PER_FETCH)
                .await?;
            if found.is_empty() {
                break;
            }
            for block in found {
                cursor = block.last_position;
                events.extend(
                    block
                        .decode::<P, M>()?
                        .into_iter()
                        .filter(|event| event.position > after && event.position <= stop),
                );
            }
        }
        events.extend(tail);
        events.truncate(limit);
        Ok(events)
    }

    /// `tail` (a tenant's rows after `after`, up to `limit`) completed with
    /// the tenant's events in blocks.
    pub(crate) async fn of_org(
        &mut self,
        org_id: OrgId,
        partition: i16,
        after: i64,
        limit: usize,
        tail: Vec<RecordedEvent>,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        // Asked after the tail was read: everything before it is in blocks.
        let before = self.tail_bounds(partition).await?.0.unwrap_or(i64::MAX);
        if after.saturating_add(1) >= before {
            return Ok(tail);
        }
        self.refuse_pruned(partition, after).await?;
        let mut events = Vec::new();
        let mut cursor = after;
        'blocks: while events.len() < limit {
            let found = self
                .blocks_keyed(partition, blocks::org_key(org_id), cursor, BLOCKS_PER_FETCH)
                .await?;
            if found.is_empty() {
                break;
            }
            for keyed in found {
                cursor = keyed.upto;
                if keyed.block.first_position >= before {
                    break 'blocks;
                }
                events.extend(
                    keyed
                        .block
                        .decode()?
                        .into_iter()
                        .filter(|event: &RecordedEvent| {
                            event.org_id == org_id
                                && event.position > after
                                && event.position < before
                        }),
                );
            }
        }
        Ok(merged(events, tail, limit, |event| event.position))
    }

    /// `tail` (a stream's rows with `after_version < stream_version <=
    /// through_version`) completed with the stream's events in blocks.
    pub(crate) async fn of_stream(
        &mut self,
        partition: Option<i16>,
        stream_id: &str,
        after_version: i64,
        through_version: i64,
        tail: Vec<RecordedEvent>,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        let stop = match tail.first() {
            Some(first) if first.stream_version == after_version.saturating_add(1) => {
                return Ok(tail)
            }
            Some(first) => (first.stream_version - 1).min(through_version),
            None => through_version,
        };
        if stop <= after_version {
            return Ok(tail);
        }
        let partition = match partition {
            Some(partition) => partition,
            None => match self.partition_of(stream_id).await? {
                Some(partition) => partition,
                None => return Ok(tail),
            },
        };
        let mut events = Vec::new();
        let mut cursor = after_version;
        'blocks: while cursor < stop {
            let found = self
                .blocks_keyed(
                    partition,
                    blocks::stream_key(stream_id),
                    cursor,
                    BLOCKS_PER_FETCH,
                )
                .await?;
            if found.is_empty() {
                break;
            }
            for keyed in found {
                events.extend(
                    keyed
                        .block
                        .decode()?
                        .into_iter()
                        .filter(|event: &RecordedEvent| {
                            event.stream_id == stream_id
                                && event.stream_version > after_version
                                && event.stream_version <= stop
                        }),
                );
                cursor = keyed.upto;
                if cursor >= stop {
                    break 'blocks;
                }
            }
        }
        let events = merged(events, tail, usize::MAX, |event| event.stream_version);
        // A stream's events before a pruned segment's end are not here: a
        // gap at the start means the read needs the archive.
        if let Some(first) = events.first() {
            if first.stream_version > after_version.saturating_add(1) {
                self.refuse_pruned(partition, 0).await?;
            }
        }
        Ok(events)
    }

    async fn partition_of(&mut self, stream_id: &str) -> Result<Option<i16>, StoreError> {
        const SQL: &str = "SELECT partition FROM streams WHERE stream_id = $1";
        Ok(on_conn!(self, |c| sqlx::query_scalar(SQL)
            .bind(stream_id)
            .fetch_optional(&mut **c)
            .await?))
    }

    /// The license stream and tenant of a session granted in a block.
    pub(crate) async fn session_in_blocks(
        &mut self,
        session_id: SessionId,
    ) -> Result<Option<(String, OrgId)>, StoreError> {
        const SQL: &str = "SELECT DISTINCT partition FROM event_block_keys WHERE key = $1";
        let key = blocks::session_key(session_id);
        let partitions: Vec<i16> = on_conn!(self, |c| sqlx::query_scalar(SQL)
            .bind(key)
            .fetch_all(&mut **c)
            .await?);
        for partition in partitions {
            let mut cursor = i64::MIN;
            loop {
                let found = self
                    .blocks_keyed(partition, key, cursor, BLOCKS_PER_FETCH)
                    .await?;
                if found.is_empty() {
                    break;
                }
                for keyed in found {
                    cursor = keyed.upto;
                    let granted =
                        keyed
                            .block
                            .decode()?
                            .into_iter()
                            .find(|event: &RecordedEvent| {
                                event.seat_touch().is_some_and(|touch| {
                                    touch.kind == seatledger_schema::SeatTouchKind::Acquired
                                        && touch.session_id == session_id
                                })
                            });
                    if let Some(event) = granted {
                        return Ok(Some((event.stream_id, event.org_id)));
                    }
                }
            }
        }
        Ok(None)
    }

    /// The next block due in the partition: the oldest `max_events` rows
    /// of the tail, if that many are older than the newest `keep` (one at
    /// least) and signed by a checkpoint (a block holds sealed events only).
    /// Reads only: rows never change, so this may run outside the
    /// transaction that stores the block ([`Conn::store_block`]).
    pub(crate) async fn next_block(
        &mut self,
        partition: i16,
        keep: i64,
        max_events: i64,
    ) -> Result<Option<EncodedBlock>, StoreError> {
        let max_events = max_events.max(1);
        let (Some(start), Some(head)) = self.tail_bounds(partition).await? else {
            return Ok(None);
        };
        const SIGNED: &str = "SELECT max(position) FROM checkpoints WHERE partition = $1";
        let signed: Option<i64> = on_conn!(self, |c| sqlx::query_scalar(SIGNED)
            .bind(partition)
            .fetch_one(&mut **c)
            .await?);
        let mut end = start.saturating_add(max_events - 1);
        // A block never crosses the end of its segment (a checkpoint).
        if let Some(last) = self
            .segment_of(partition, start)
            .await?
            .and_then(|segment| segment.last_position)
        {
            end = end.min(last);
        }
        if end > head - keep.max(1) || end > signed.unwrap_or(0) {
            return Ok(None);
        }
        let events: Vec<RecordedEvent> = self
            .tail_between(partition, start - 1, end, max_events)
            .await?;
        let Some(first) = events.first() else {
            return Ok(None);
        };
        let (before, before_hash) = self.head_of_blocks(partition).await?;
        if before != start - 1 || before_hash != first.prev_hash {
            return Err(StoreError::Corrupt(format!(
                "the row tail of partition {partition} starts at position {start}, \
                 which does not continue its blocks (they end at {before}): not compacted"
            )));
        }
        seatledger_schema::verify_chain(before, before_hash, &events).map_err(|error| {
            StoreError::Corrupt(format!(
                "{error}: not compacted (run seatledger-replay verify)"
            ))
        })?;
        Ok(Some(blocks::encode(&events)?))
    }

    /// Stores `block` and removes its rows, in the caller's transaction,
    /// if the tail still starts where the block does (another compactor
    /// may have moved it since [`Conn::next_block`] read it). Returns
    /// whether it did.
    pub(crate) async fn store_block(&mut self, block: &EncodedBlock) -> Result<bool, StoreError> {
        let row = &block.row;
        if self.tail_bounds(row.partition).await?.0 != Some(row.first_position) {
            return Ok(false);
        }
        self.insert_block(block).await?;
        const DELETE: &str =
            "DELETE FROM events WHERE partition = $1 AND position >= $2 AND position <= $3";
        on_conn!(self, |c| sqlx::query(DELETE)
            .bind(row.partition)
            .bind(row.first_position)
            .bind(row.last_position)
            .execute(&mut **c)
            .await
            .map(drop)?);
        Ok(true)
    }

    async fn insert_block(&mut self, block: &EncodedBlock) -> Result<(), StoreError> {
        const INSERT: &str = "INSERT INTO event_blocks \
             (partition, segment, first_position, last_position, prev_hash, last_hash, body) \
             VALUES ($1, $7, $2, $3, $4, $5, $6)";
        let row = &block.row;
        let Some(segment) = self.segment_of(row.partition, row.first_position).await? else {
            return Err(StoreError::Corrupt(format!(
                "no segment holds position {} of partition {}",
                row.first_position, row.partition
            )));
        };
        if segment
            .last_position
            .is_some_and(|last| last < row.last_position)
        {
            return Err(StoreError::Corrupt(format!(
                "the block of positions {}..={} crosses the end of segment {}",
                row.first_position, row.last_position, segment.segment
            )));
        }
        on_conn!(self, |c| sqlx::query(INSERT)
            .bind(row.partition)
            .bind(row.first_position)
            .bind(row.last_position)
            .bind(&row.prev_hash)
            .bind(&row.last_hash)
            .bind(&row.body)
            .bind(segment.segment)
            .execute(&mut **c)
            .await
            .map(drop)?);
        macro_rules! insert_keys {
            ($db:ty, $c:expr) => {
                // 5 binds a row: far below either backend's limit.
                for chunk in block.keys.chunks(2_000) {
                    let mut query = sqlx::QueryBuilder::<$db>::new(
                        "INSERT INTO event_block_keys (key, upto, partition, first_position, segment) ",
                    );
                    query.push_values(chunk, |mut values, (key, upto)| {
                        values
                            .push_bind(*key)
                            .push_bind(*upto)
                            .push_bind(row.partition)
                            .push_bind(row.first_position)
                            .push_bind(segment.segment);
                    });
                    query.build().execute(&mut **$c).await?;
                }
            };
        }
        match self {
            Conn::Pg(c) => insert_keys!(sqlx::Postgres, c),
            Conn::Lite(c) => insert_keys!(sqlx::Sqlite, c),
        }
        Ok(())
    }
}

/// `from_blocks` then `tail`, ordered by `order`, each event once, at most
/// `limit`.
fn merged(
    mut from_blocks: Vec<RecordedEvent>,
    tail: Vec<RecordedEvent>,
    limit: usize,
    order: impl Fn(&RecordedEvent) -> i64,
) -> Vec<RecordedEvent> {
    if from_blocks.is_empty() {
        return tail;
    }
    from_blocks.extend(tail);
    from_blocks.sort_by_key(|event| order(event));
    from_blocks.dedup_by_key(|event| order(event));
    from_blocks.truncate(limit);
    from_blocks
}
