//! Typed ids: an organization's id is an [`OrgId`], never a bare `Uuid`
//! that could as well be a license's. Each serializes as the UUID it wraps
//! (`serde(transparent)`), so events, `/events` and the API carry the same
//! bytes as before; the compiler keeps the kinds apart.
//!
//! One name per concept: an organization is `org` everywhere in the code.
//! The envelope's field is still called `tenant_id` on the wire (the hash
//! covers that name), which is the only place the old word remains.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;
use uuid::Uuid;

macro_rules! uuid_id {
    ($(#[$doc:meta])* $name:ident) => {
        sqlx_id!($name);

        $(#[$doc])*
        #[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default, Serialize, Deserialize)]
        #[serde(transparent)]
        pub struct $name(Uuid);

        impl $name {
            pub const fn from_uuid(id: Uuid) -> Self {
                $name(id)
            }

            pub const fn as_uuid(self) -> Uuid {
                self.0
            }

            /// A fresh random id (UUIDv4).
            pub fn new_v4() -> Self {
                $name(Uuid::new_v4())
            }

            pub const fn as_bytes(&self) -> &[u8; 16] {
                self.0.as_bytes()
            }

            pub const fn is_nil(self) -> bool {
                self.0.is_nil()
            }

            /// A fresh time-ordered id (UUIDv7).
            pub fn now_v7() -> Self {
                $name(Uuid::now_v7())
            }

            /// The all-zero id.
            pub const fn nil() -> Self {
                $name(Uuid::nil())
            }

            pub const fn from_u128(value: u128) -> Self {
                $name(Uuid::from_u128(value))
            }
        }

        impl From<Uuid> for $name {
            fn from(id: Uuid) -> Self {
                $name(id)
            }
        }

        impl From<$name> for Uuid {
            fn from(id: $name) -> Uuid {
                id.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Display::fmt(&self.0, f)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({})", stringify!($name), self.0)
            }
        }

        impl FromStr for $name {
            type Err = uuid::Error;

            fn from_str(text: &str) -> Result<Self, Self::Err> {
                Uuid::parse_str(text).map($name)
            }
        }
    };
}

/// The typed ids as sqlx values: on PostgreSQL the `uuid` they wrap (and
/// arrays of them, for `UNNEST`), on SQLite the UUID's hyphenated text,
/// which is how the SQLite schema stores ids.
#[cfg(feature = "sqlx")]
macro_rules! sqlx_id {
    ($name:ident) => {
        impl sqlx::Type<sqlx::Postgres> for $name {
            fn type_info() -> sqlx::postgres::PgTypeInfo {
                <uuid::Uuid as sqlx::Type<sqlx::Postgres>>::type_info()
            }
        }

        impl sqlx::postgres::PgHasArrayType for $name {
            fn array_type_info() -> sqlx::postgres::PgTypeInfo {
                <uuid::Uuid as sqlx::postgres::PgHasArrayType>::array_type_info()
            }
        }

        impl<'q> sqlx::Encode<'q, sqlx::Postgres> for $name {
            fn encode_by_ref(
                &self,
                buf: &mut sqlx::postgres::PgArgumentBuffer,
            ) -> Result<sqlx::encode::IsNull, sqlx::error::BoxDynError> {
                <uuid::Uuid as sqlx::Encode<'q, sqlx::Postgres>>::encode_by_ref(&self.0, buf)
            }
        }

        impl<'r> sqlx::Decode<'r, sqlx::Postgres> for $name {
            fn decode(
                value: sqlx::postgres::PgValueRef<'r>,
            ) -> Result<Self, sqlx::error::BoxDynError> {
                <uuid::Uuid as sqlx::Decode<'r, sqlx::Postgres>>::decode(value).map($name)
            }
        }

        impl sqlx::Type<sqlx::Sqlite> for $name {
            fn type_info() -> sqlx::sqlite::SqliteTypeInfo {
                <String as sqlx::Type<sqlx::Sqlite>>::type_info()
            }
        }

        impl<'q> sqlx::Encode<'q, sqlx::Sqlite> for $name {
            fn encode_by_ref(
                &self,
                buf: &mut Vec<sqlx::sqlite::SqliteArgumentValue<'q>>,
            ) -> Result<sqlx::encode::IsNull, sqlx::error::BoxDynError> {
                <String as sqlx::Encode<'q, sqlx::Sqlite>>::encode(self.0.to_string(), buf)
            }
        }

        impl<'r> sqlx::Decode<'r, sqlx::Sqlite> for $name {
            fn decode(
                value: sqlx::sqlite::SqliteValueRef<'r>,
            ) -> Result<Self, sqlx::error::BoxDynError> {
                let text = <&str as sqlx::Decode<'r, sqlx::Sqlite>>::decode(value)?;
                Ok($name(uuid::Uuid::parse_str(text)?))
            }
        }
    };
}

#[cfg(feature = "sqlx")]
pub(crate) use sqlx_id;

#[cfg(not(feature = "sqlx"))]
macro_rules! sqlx_id {
    ($name:ident) => {};
}

uuid_id!(
    /// An organization (a tenant of the service).
    OrgId
);
uuid_id!(
    /// A license.
    LicenseId
);
uuid_id!(
    /// A user account of an organization.
    UserId
);
uuid_id!(
    /// A lease of a seat, from its acquire to its release or expiry.
    SessionId
);
uuid_id!(
    /// An API token (a user's, or a client token of its own).
    TokenId
);

/// The stream a command is decided on and an event is recorded in:
/// `org-<uuid>` (an organization and its users), `license-<uuid>` (a
/// license and its seats), or `log-<partition>` (the log's own events).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum StreamId {
    Org(OrgId),
    License(LicenseId),
    /// The log's own stream of a partition (prunes).
    Log(i16),
}

impl fmt::Display for StreamId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StreamId::Org(id) => write!(f, "org-{id}"),
            StreamId::License(id) => write!(f, "license-{id}"),
            StreamId::Log(partition) => write!(f, "log-{partition}"),
        }
    }
}

impl StreamId {
    /// The stream a stored `stream_id` names; `None` for any other text.
    pub fn parse(text: &str) -> Option<StreamId> {
        if let Some(id) = text.strip_prefix("org-") {
            return id.parse().ok().map(StreamId::Org);
        }
        if let Some(id) = text.strip_prefix("license-") {
            return id.parse().ok().map(StreamId::License);
        }
        if let Some(partition) = text.strip_prefix("log-") {
            return partition
                .parse::<i16>()
                .ok()
                .filter(|p| p.to_string() == partition)
                .map(StreamId::Log);
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_id_serializes_as_the_uuid_it_wraps() {
        let id = LicenseId::from_u128(3);
        assert_eq!(
            serde_json::to_string(&id).unwrap(),
            serde_json::to_string(&Uuid::from_u128(3)).unwrap()
        );
        assert_eq!(
            serde_json::from_str::<LicenseId>("\"00000000-0000-0000-0000-000000000003\"").unwrap(),
            id
        );
        assert_eq!(id.to_string(), "00000000-0000-0000-0000-000000000003");
        assert_eq!(
            format!("{id:?}"),
            "LicenseId(00000000-0000-0000-0000-000000000003)"
        );
    }

    #[test]
    fn a_stream_id_reads_back_what_it_writes() {
        for stream in [
            StreamId::Org(OrgId::from_u128(1)),
            StreamId::License(LicenseId::from_u128(2)),
            StreamId::Log(0),
            StreamId::Log(-3),
        ] {
            assert_eq!(StreamId::parse(&stream.to_string()), Some(stream));
        }
        for text in ["org-x", "license-", "log-01", "log-+1", "user-1", ""] {
            assert_eq!(StreamId::parse(text), None, "{text}");
        }
    }
}
