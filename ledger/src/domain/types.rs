//! Values with rules, parsed once at the edge and trusted afterwards.

use seatledger_schema::limits;
use std::fmt;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct InvalidField {
    pub field: &'static str,
    pub message: String,
}

impl InvalidField {
    pub fn new(field: &'static str, message: impl Into<String>) -> Self {
        InvalidField {
            field,
            message: message.into(),
        }
    }
}

fn bounded_text(field: &'static str, raw: &str, max: usize) -> Result<String, InvalidField> {
    let text = raw.trim();
    if text.is_empty() {
        return Err(InvalidField::new(field, "must not be empty"));
    }
    if text.chars().count() > max {
        return Err(InvalidField::new(
            field,
            format!("must be at most {max} characters"),
        ));
    }
    if text.chars().any(char::is_control) {
        return Err(InvalidField::new(
            field,
            "must not contain control characters",
        ));
    }
    Ok(text.to_owned())
}

macro_rules! text_newtype {
    ($(#[$doc:meta])* $name:ident, $field:literal, $max:expr) => {
        $(#[$doc])*
        #[derive(Clone, Debug, PartialEq, Eq, Hash)]
        pub struct $name(String);

        impl $name {
            pub fn parse(raw: &str) -> Result<Self, InvalidField> {
                bounded_text($field, raw, $max).map($name)
            }

            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
    };
}

text_newtype!(
    /// A person's, organization's or license's display name.
    Name, "name", limits::NAME_LEN_MAX
);
text_newtype!(
    /// Identifies the machine a seat is used on (client-chosen, opaque).
    HardwareId, "hardware_id", limits::HARDWARE_ID_LEN_MAX
);
text_newtype!(
    /// Why an admin suspended, reinstated or revoked a license.
    Reason, "reason", limits::REASON_LEN_MAX
);

/// An email address, lower-cased and in Unicode NFC, so that `josé` typed
/// with a precomposed `é` or with `e` and a combining accent is one
/// address. Deliberately loose (one `@`, something on each side, no
/// spaces): the only real check is a mail that arrives.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Email(String);

impl Email {
    pub fn parse(raw: &str) -> Result<Self, InvalidField> {
        // Lower-cased before the bound is checked: some characters grow
        // when lower-cased ('İ' becomes "i̇"), and the stored address must
        // be within the limit, not the one that was sent.
        use unicode_normalization::UnicodeNormalization;
        let normalized: String = raw.to_lowercase().nfc().collect();
        let text = bounded_text("email", &normalized, limits::EMAIL_LEN_MAX)?;
        let valid = match text.split_once('@') {
            Some((local, domain)) => {
                !local.is_empty()
                    && domain.contains('.')
                    && !domain.starts_with('.')
                    && !domain.ends_with('.')
                    && !domain.contains('@')
            }
            None => false,
        };
        if !valid || text.contains(char::is_whitespace) {
            return Err(InvalidField::new("email", "is not an email address"));
        }
        Ok(Email(text))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

macro_rules! ranged_newtype {
    ($(#[$doc:meta])* $name:ident, $field:literal, $min:expr, $max:expr) => {
        $(#[$doc])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(u32);

        impl $name {
            pub const MIN: u32 = $min;
            pub const MAX: u32 = $max;

            pub fn new(value: u32) -> Result<Self, InvalidField> {
                if ($min..=$max).contains(&value) {
                    Ok($name(value))
                } else {
                    Err(InvalidField::new($field, format!("must be between {} and {}", $min, $max)))
                }
            }

            pub fn get(self) -> u32 {
                self.0
            }
        }
    };
}

ranged_newtype!(
    /// Seats of a license.
    SeatCount, "seats", limits::SEATS_MIN, limits::SEATS_MAX
);
ranged_newtype!(
    /// Seconds a lease lives without a heartbeat.
    HeartbeatTtl, "heartbeat_ttl_s", limits::HEARTBEAT_TTL_S_MIN, limits::HEARTBEAT_TTL_S_MAX
);
ranged_newtype!(
    /// Extra seats allowed above `seats`, in percent (default 0).
    OveragePercent, "max_overage_percent", 0, limits::MAX_OVERAGE_PERCENT_MAX
);

// Written out rather than derived by the macro: a derived zero would be an
// invalid `SeatCount` and the wrong `HeartbeatTtl`.
#[allow(clippy::derivable_impls)]
impl Default for OveragePercent {
    fn default() -> Self {
        OveragePercent(0)
    }
}

impl Default for HeartbeatTtl {
    fn default() -> Self {
        HeartbeatTtl(limits::HEARTBEAT_TTL_S_DEFAULT)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_are_enforced() {
        assert!(SeatCount::new(0).is_err());
        assert!(SeatCount::new(1).is_ok());
        assert!(SeatCount::new(100_000).is_ok());
        assert_eq!(SeatCount::new(100_001).unwrap_err().field, "seats");
        assert!(HeartbeatTtl::new(9).is_err());
        assert!(HeartbeatTtl::new(86_401).is_err());
        assert!(OveragePercent::new(101).is_err());
    }

    #[test]
    fn text_is_trimmed_and_bounded() {
        assert_eq!(HardwareId::parse("  m-1 ").unwrap().as_str(), "m-1");
        assert!(HardwareId::parse("   ").is_err());
        assert!(HardwareId::parse(&"x".repeat(257)).is_err());
        assert!(Name::parse("a\u{0}b").is_err());
    }

    #[test]
    fn emails_are_lower_cased_and_loosely_checked() {
        assert_eq!(
            Email::parse("Ada@Example.COM").unwrap().as_str(),
            "ada@example.com"
        );
        // 125 characters that lower-case to 250, and the domain: too long
        // once stored, though short enough as sent.
        let growing = format!("{}@example.com", "İ".repeat(125));
        assert!(growing.chars().count() <= limits::EMAIL_LEN_MAX);
        assert!(Email::parse(&growing).is_err());
        for bad in [
            "ada",
            "ada@",
            "@example.com",
            "ada@example",
            "a da@example.com",
            "a@b@c.com",
        ] {
            assert!(Email::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn emails_typed_with_composed_or_combining_accents_are_one_address() {
        let composed = Email::parse("jos\u{e9}@example.com").unwrap();
        let combining = Email::parse("jose\u{301}@example.com").unwrap();
        let upper = Email::parse("JOSE\u{301}@EXAMPLE.COM").unwrap();
        assert_eq!(composed, combining);
        assert_eq!(composed, upper);
        assert_eq!(composed.as_str(), "jos\u{e9}@example.com");
    }

    proptest::proptest! {
        /// Parsing is idempotent: a stored address parses to itself, so
        /// what reaches an event reads back the same.
        #[test]
        fn a_parsed_email_parses_to_itself(local in "\\PC{1,40}", domain in "[a-zA-Z\u{e9}\u{301}]{1,20}") {
            if let Ok(email) = Email::parse(&format!("{local}@{domain}.com")) {
                proptest::prop_assert_eq!(Email::parse(email.as_str()).unwrap(), email);
            }
        }
    }
}
