//! `Timestamp`, `ChainHash` and [`StoredUuid`] as sqlx values (feature
//! `sqlx`, for the storage layer), so one statement's Rust code binds and
//! decodes them on either backend:
//!
//! | type | PostgreSQL | SQLite |
//! |---|---|---|
//! | `Timestamp` | `timestamptz` | integer microseconds since 1970 |
//! | `ChainHash` | `bytea` of 32 bytes | blob of 32 bytes |
//! | `StoredUuid` and the typed ids | `uuid` | hyphenated text |
//!
//! Decoding refuses what the type cannot hold (an instant outside
//! `Timestamp`'s range, a hash of another length): such a row was not
//! written by seatledger.

use crate::{ChainHash, Timestamp};
use chrono::{DateTime, Utc};
use sqlx::encode::IsNull;
use sqlx::error::BoxDynError;
use sqlx::postgres::{PgArgumentBuffer, PgHasArrayType, PgTypeInfo, PgValueRef};
use sqlx::sqlite::{SqliteArgumentValue, SqliteTypeInfo, SqliteValueRef};
use sqlx::{Decode, Encode, Postgres, Sqlite, Type};

/// A UUID that has no type of its own (an event's id), stored as the
/// typed ids are.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StoredUuid(pub uuid::Uuid);

crate::ids::sqlx_id!(StoredUuid);

impl Type<Postgres> for Timestamp {
    fn type_info() -> PgTypeInfo {
        <DateTime<Utc> as Type<Postgres>>::type_info()
    }
}

impl PgHasArrayType for Timestamp {
    fn array_type_info() -> PgTypeInfo {
        <DateTime<Utc> as PgHasArrayType>::array_type_info()
    }
}

impl Encode<'_, Postgres> for Timestamp {
    fn encode_by_ref(&self, buf: &mut PgArgumentBuffer) -> Result<IsNull, BoxDynError> {
        <DateTime<Utc> as Encode<Postgres>>::encode(self.to_datetime(), buf)
    }
}

impl<'r> Decode<'r, Postgres> for Timestamp {
    fn decode(value: PgValueRef<'r>) -> Result<Self, BoxDynError> {
        let instant = <DateTime<Utc> as Decode<Postgres>>::decode(value)?;
        Ok(Timestamp::try_from_micros(instant.timestamp_micros())?)
    }
}

impl Type<Sqlite> for Timestamp {
    fn type_info() -> SqliteTypeInfo {
        <i64 as Type<Sqlite>>::type_info()
    }
}

impl<'q> Encode<'q, Sqlite> for Timestamp {
    fn encode_by_ref(&self, buf: &mut Vec<SqliteArgumentValue<'q>>) -> Result<IsNull, BoxDynError> {
        <i64 as Encode<Sqlite>>::encode(self.as_micros(), buf)
    }
}

impl<'r> Decode<'r, Sqlite> for Timestamp {
    fn decode(value: SqliteValueRef<'r>) -> Result<Self, BoxDynError> {
        let micros = <i64 as Decode<Sqlite>>::decode(value)?;
        Ok(Timestamp::try_from_micros(micros)?)
    }
}

fn hash_of(bytes: &[u8]) -> Result<ChainHash, BoxDynError> {
    ChainHash::from_slice(bytes)
        .ok_or_else(|| format!("a hash of {} bytes, not 32", bytes.len()).into())
}

impl Type<Postgres> for ChainHash {
    fn type_info() -> PgTypeInfo {
        <Vec<u8> as Type<Postgres>>::type_info()
    }
}

impl PgHasArrayType for ChainHash {
    fn array_type_info() -> PgTypeInfo {
        <Vec<u8> as PgHasArrayType>::array_type_info()
    }
}

impl Encode<'_, Postgres> for ChainHash {
    fn encode_by_ref(&self, buf: &mut PgArgumentBuffer) -> Result<IsNull, BoxDynError> {
        <&[u8] as Encode<Postgres>>::encode(self.as_bytes().as_slice(), buf)
    }
}

impl<'r> Decode<'r, Postgres> for ChainHash {
    fn decode(value: PgValueRef<'r>) -> Result<Self, BoxDynError> {
        hash_of(<&[u8] as Decode<Postgres>>::decode(value)?)
    }
}

impl Type<Sqlite> for ChainHash {
    fn type_info() -> SqliteTypeInfo {
        <Vec<u8> as Type<Sqlite>>::type_info()
    }
}

impl<'q> Encode<'q, Sqlite> for ChainHash {
    fn encode_by_ref(&self, buf: &mut Vec<SqliteArgumentValue<'q>>) -> Result<IsNull, BoxDynError> {
        <Vec<u8> as Encode<Sqlite>>::encode(self.as_bytes().to_vec(), buf)
    }
}

impl<'r> Decode<'r, Sqlite> for ChainHash {
    fn decode(value: SqliteValueRef<'r>) -> Result<Self, BoxDynError> {
        hash_of(<&[u8] as Decode<Sqlite>>::decode(value)?)
    }
}
