//! Segments of a partition's log (docs/design.md §3, "Segments, archives
//! and pruning"): consecutive position ranges, each ending at a signed
//! checkpoint. The open segment (no last position yet) is sealed by the
//! compactor at the first checkpoint at or after its target size, and the
//! next one opens after it. Blocks never cross a segment's end, so a
//! sealed segment's blocks can be archived, and pruned, as a whole.

use super::compact::on_conn;
use super::compact::Conn;
use super::StoreError;
use seatledger_schema::{OrgId, SessionId};

/// One segment, as `event_segments` holds it.
#[derive(Clone, Debug, PartialEq, Eq, sqlx::FromRow)]
pub struct Segment {
    pub partition: i16,
    pub segment: i64,
    pub first_position: i64,
    /// `None` while the segment is open.
    pub last_position: Option<i64>,
    /// The SHA-256 of the archive file, once the segment is pruned.
    pub archive_sha256: Option<Vec<u8>>,
    /// When the segment was pruned (RFC 3339).
    pub pruned_at: Option<String>,
}

impl Segment {
    pub fn is_sealed(&self) -> bool {
        self.last_position.is_some()
    }

    pub fn is_pruned(&self) -> bool {
        self.pruned_at.is_some()
    }
}

const SEGMENT_COLUMNS: &str =
    "partition, segment, first_position, last_position, archive_sha256, pruned_at";

impl Conn<'_> {
    /// The partition's segments, oldest first.
    pub(crate) async fn segments(&mut self, partition: i16) -> Result<Vec<Segment>, StoreError> {
        let sql = format!(
            "SELECT {SEGMENT_COLUMNS} FROM event_segments WHERE partition = $1 ORDER BY segment"
        );
        Ok(on_conn!(self, |c| sqlx::query_as(&sql)
            .bind(partition)
            .fetch_all(&mut **c)
            .await?))
    }

    /// The partition's newest segment.
    async fn newest_segment(&mut self, partition: i16) -> Result<Option<Segment>, StoreError> {
        let sql = format!(
            "SELECT {SEGMENT_COLUMNS} FROM event_segments WHERE partition = $1 \
             ORDER BY segment DESC LIMIT 1"
        );
        Ok(on_conn!(self, |c| sqlx::query_as(&sql)
            .bind(partition)
            .fetch_optional(&mut **c)
            .await?))
    }

    /// Opens `segment` at `first_position` (with its tables, on PostgreSQL).
    async fn open_segment(
        &mut self,
        partition: i16,
        segment: i64,
        first_position: i64,
    ) -> Result<(), StoreError> {
        const INSERT: &str =
            "INSERT INTO event_segments (partition, segment, first_position) VALUES ($1, $2, $3)";
        on_conn!(self, |c| sqlx::query(INSERT)
            .bind(partition)
            .bind(segment)
            .bind(first_position)
            .execute(&mut **c)
            .await
            .map(drop)?);
        if let Conn::Pg(c) = self {
            sqlx::query("SELECT seatledger_open_segment_tables($1, $2)")
                .bind(partition)
                .bind(segment)
                .execute(&mut **c)
                .await?;
        }
        Ok(())
    }

    /// Whether [`Conn::seal_segments`] has anything to write: no segment
    /// yet, or a checkpoint that ends the open one.
    pub(crate) async fn seal_due(
        &mut self,
        partition: i16,
        target_events: i64,
    ) -> Result<bool, StoreError> {
        match self.newest_segment(partition).await? {
            None => Ok(true),
            Some(open) if open.last_position.is_some() => Ok(true),
            Some(open) => Ok(self.seal_at(&open, target_events).await?.is_some()),
        }
    }

    /// Where the open segment `open` is to end: the first checkpoint at or
    /// after `target_events` events into it and after every block it
    /// holds; `None` while there is none.
    async fn seal_at(
        &mut self,
        open: &Segment,
        target_events: i64,
    ) -> Result<Option<i64>, StoreError> {
        const HELD: &str = "SELECT max(last_position) FROM event_blocks \
             WHERE partition = $1 AND segment = $2";
        let held: Option<i64> = on_conn!(self, |c| sqlx::query_scalar(HELD)
            .bind(open.partition)
            .bind(open.segment)
            .fetch_one(&mut **c)
            .await?);
        let at_least = open
            .first_position
            .saturating_add(target_events.max(1) - 1)
            .max(held.unwrap_or(0));
        const END: &str =
            "SELECT min(position) FROM checkpoints WHERE partition = $1 AND position >= $2";
        Ok(on_conn!(self, |c| sqlx::query_scalar(END)
            .bind(open.partition)
            .bind(at_least)
            .fetch_one(&mut **c)
            .await?))
    }

    /// Seals every segment of the partition that a signed checkpoint now
    /// ends: the open segment ends at the first checkpoint at or after
    /// `target_events` events into it (and after any block it already
    /// holds), and the next one opens. Opens the first segment of a
    /// partition that has none. Returns the newest segment. The caller
    /// holds the partition's compaction turn.
    pub(crate) async fn seal_segments(
        &mut self,
        partition: i16,
        target_events: i64,
    ) -> Result<Segment, StoreError> {
        loop {
            let Some(open) = self.newest_segment(partition).await? else {
                self.open_segment(partition, 1, 1).await?;
                continue;
            };
            if let Some(last) = open.last_position {
                // Sealed without a successor (a crash between the two
                // statements cannot happen: they share a transaction), kept
                // for safety.
                self.open_segment(partition, open.segment + 1, last.saturating_add(1))
                    .await?;
                continue;
            }
            let end = self.seal_at(&open, target_events).await?;
            let Some(end) = end else {
                return Ok(open);
            };
            const SEAL: &str = "UPDATE event_segments SET last_position = $3 \
                 WHERE partition = $1 AND segment = $2 AND last_position IS NULL";
            on_conn!(self, |c| sqlx::query(SEAL)
                .bind(partition)
                .bind(open.segment)
                .bind(end)
                .execute(&mut **c)
                .await
                .map(drop)?);
            self.open_segment(partition, open.segment + 1, end.saturating_add(1))
                .await?;
        }
    }

    /// The segment holding `position` (the newest that starts at or
    /// before it).
    pub(crate) async fn segment_of(
        &mut self,
        partition: i16,
        position: i64,
    ) -> Result<Option<Segment>, StoreError> {
        let sql = format!(
            "SELECT {SEGMENT_COLUMNS} FROM event_segments WHERE partition = $1 \
             AND first_position <= $2 ORDER BY segment DESC LIMIT 1"
        );
        Ok(on_conn!(self, |c| sqlx::query_as(&sql)
            .bind(partition)
            .bind(position)
            .fetch_optional(&mut **c)
            .await?))
    }

    /// The end of the partition's newest pruned segment and the hash its
    /// boundary checkpoint signs: where what the database still holds
    /// begins. `None` when nothing was pruned.
    pub(crate) async fn pruned_through(
        &mut self,
        partition: i16,
    ) -> Result<Option<(i64, Vec<u8>)>, StoreError> {
        const SQL: &str = "SELECT s.last_position, c.hash FROM event_segments s \
             JOIN checkpoints c ON c.partition = s.partition AND c.position = s.last_position \
             WHERE s.partition = $1 AND s.pruned_at IS NOT NULL \
             ORDER BY s.segment DESC LIMIT 1";
        Ok(on_conn!(self, |c| sqlx::query_as(SQL)
            .bind(partition)
            .fetch_optional(&mut **c)
            .await?))
    }
}

/// A session granted in a segment being pruned and live at the cut: its
/// id, its license stream and its tenant.
pub type PrunedSession = (SessionId, String, OrgId);

/// One segment's prune: which segment, its archive's SHA-256, the
/// sessions to keep for the session lookup (granted in it and live at the
/// cut), and the kept sessions to drop (ended since an earlier prune).
#[derive(Clone, Copy, Debug)]
pub struct SegmentPrune<'a> {
    pub segment: i64,
    pub archive_sha256: &'a [u8; 32],
    pub sessions: &'a [PrunedSession],
    pub forget: &'a [SessionId],
}

impl Conn<'_> {
    /// Marks sealed segment `prune.segment` pruned (with its archive's SHA-256)
    /// and removes its blocks: on PostgreSQL by detaching and dropping its
    /// tables, on SQLite by the DELETE its triggers allow only for a
    /// segment marked pruned. Refuses an open or already pruned segment,
    /// one that still has rows in `events`, and one after an unpruned
    /// segment. Keeps and drops the sessions `prune` names. The caller
    /// holds the partition's compaction turn, in a transaction.
    pub(crate) async fn prune_segment(
        &mut self,
        partition: i16,
        prune: SegmentPrune<'_>,
        pruned_at: &str,
    ) -> Result<(), StoreError> {
        let SegmentPrune {
            segment,
            archive_sha256,
            sessions,
            forget,
        } = prune;
        if let Some(why) = self.unprunable(partition, segment).await? {
            return Err(StoreError::Corrupt(format!(
                "segment {segment} of partition {partition} cannot be pruned: {why}"
            )));
        }
        const MARK: &str = "UPDATE event_segments SET archive_sha256 = $3, pruned_at = $4 \
             WHERE partition = $1 AND segment = $2";
        on_conn!(self, |c| sqlx::query(MARK)
            .bind(partition)
            .bind(segment)
            .bind(archive_sha256.as_slice())
            .bind(pruned_at)
            .execute(&mut **c)
            .await
            .map(drop)?);
        self.keep_sessions(sessions, forget).await?;
        self.drop_blocks(partition, segment).await
    }

    /// Why segment `segment` cannot be pruned, if it cannot: it must exist,
    /// be sealed and not pruned, follow pruned segments only, and be
    /// compacted into blocks whole.
    async fn unprunable(
        &mut self,
        partition: i16,
        segment: i64,
    ) -> Result<Option<&'static str>, StoreError> {
        let segments = self.segments(partition).await?;
        let Some(index) = segments.iter().position(|s| s.segment == segment) else {
            return Ok(Some("there is no such segment"));
        };
        let found = &segments[index];
        let Some(last) = found.last_position else {
            return Ok(Some("it is not sealed"));
        };
        if found.is_pruned() {
            return Ok(Some("it is already pruned"));
        }
        if segments[..index].iter().any(|s| !s.is_pruned()) {
            return Ok(Some("an older segment is not pruned"));
        }
        const TAIL: &str = "SELECT min(position) FROM events WHERE partition = $1";
        let tail: Option<i64> = on_conn!(self, |c| sqlx::query_scalar(TAIL)
            .bind(partition)
            .fetch_one(&mut **c)
            .await?);
        if tail.is_some_and(|start| start <= last) {
            return Ok(Some("some of its events are not compacted into blocks yet"));
        }
        Ok(None)
    }

    /// Keeps `sessions` (granted in pruned segments, still live) for the
    /// session lookup, and forgets `forget` (ended).
    async fn keep_sessions(
        &mut self,
        sessions: &[PrunedSession],
        forget: &[SessionId],
    ) -> Result<(), StoreError> {
        match self {
            Conn::Pg(c) => {
                for session_id in forget {
                    sqlx::query("DELETE FROM pruned_sessions WHERE session_id = $1")
                        .bind(session_id)
                        .execute(&mut **c)
                        .await?;
                }
                for (session_id, stream_id, org_id) in sessions {
                    sqlx::query(
                        "INSERT INTO pruned_sessions (session_id, stream_id, tenant_id) \
                         VALUES ($1, $2, $3) ON CONFLICT DO NOTHING",
                    )
                    .bind(session_id)
                    .bind(stream_id)
                    .bind(org_id)
                    .execute(&mut **c)
                    .await?;
                }
            }
            Conn::Lite(c) => {
                for session_id in forget {
                    sqlx::query("DELETE FROM pruned_sessions WHERE session_id = ?")
                        .bind(session_id.to_string())
                        .execute(&mut **c)
                        .await?;
                }
                for (session_id, stream_id, org_id) in sessions {
                    sqlx::query(
                        "INSERT INTO pruned_sessions (session_id, stream_id, tenant_id) \
                         VALUES (?, ?, ?) ON CONFLICT DO NOTHING",
                    )
                    .bind(session_id.to_string())
                    .bind(stream_id)
                    .bind(org_id.to_string())
                    .execute(&mut **c)
                    .await?;
                }
            }
        }
        Ok(())
    }

    /// Drops a segment's blocks: on PostgreSQL its partitions are detached
    /// and dropped; on SQLite its rows deleted (the trigger allows it now
    /// that the segment is marked pruned).
    async fn drop_blocks(&mut self, partition: i16, segment: i64) -> Result<(), StoreError> {
        match self {
            Conn::Pg(c) => {
                for table in ["event_blocks", "event_block_keys"] {
                    let part = format!("{table}_{partition}_{segment}");
                    sqlx::query(&format!("ALTER TABLE {table} DETACH PARTITION {part}"))
                        .execute(&mut **c)
                        .await?;
                    sqlx::query(&format!("DROP TABLE {part}"))
                        .execute(&mut **c)
                        .await?;
                }
            }
            Conn::Lite(c) => {
                for table in ["event_block_keys", "event_blocks"] {
                    sqlx::query(&format!(
                        "DELETE FROM {table} WHERE partition = ? AND segment = ?"
                    ))
                    .bind(partition)
                    .bind(segment)
                    .execute(&mut **c)
                    .await?;
                }
            }
        }
        Ok(())
    }

    /// Every session a prune kept, oldest prune first.
    pub(crate) async fn pruned_sessions(&mut self) -> Result<Vec<PrunedSession>, StoreError> {
        match self {
            Conn::Pg(c) => Ok(sqlx::query_as(
                "SELECT session_id, stream_id, tenant_id FROM pruned_sessions",
            )
            .fetch_all(&mut **c)
            .await?),
            Conn::Lite(c) => Ok(sqlx::query_as(
                "SELECT session_id, stream_id, tenant_id FROM pruned_sessions",
            )
            .fetch_all(&mut **c)
            .await?),
        }
    }

    /// The license stream and tenant of a session a prune kept.
    pub(crate) async fn pruned_session(
        &mut self,
        session_id: SessionId,
    ) -> Result<Option<(String, OrgId)>, StoreError> {
        match self {
            Conn::Pg(c) => Ok(sqlx::query_as(
                "SELECT stream_id, tenant_id FROM pruned_sessions WHERE session_id = $1",
            )
            .bind(session_id)
            .fetch_optional(&mut **c)
            .await?),
            Conn::Lite(c) => Ok(sqlx::query_as(
                "SELECT stream_id, tenant_id FROM pruned_sessions WHERE session_id = ?",
            )
            .bind(session_id)
            .fetch_optional(&mut **c)
            .await?),
        }
    }
}
