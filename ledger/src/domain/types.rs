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

/// Characters no name, email or other identifier may hold: controls, and
/// the ones that are invisible or reorder the text around them, so that
/// two identifiers that look the same are the same. These are the code
/// points of the Basic Multilingual Plane that PRECIS (RFC 8264) disallows
/// for being controls, format characters (general category Cf: zero-width
/// spaces and joiners, bidirectional embeddings, overrides and isolates,
/// the byte-order mark), default-ignorable (fillers and selectors of no
/// width), private use, or noncharacters, and the line and paragraph
/// separators. The rest of PRECIS (unassigned code points, which change
/// with each Unicode version, and the planes above the BMP) is not applied:
/// the OpenAPI patterns state this exact set, and the contract run holds
/// the server to them (docs/design.md, "Identifiers").
pub fn is_disallowed_in_identifiers(c: char) -> bool {
    c.is_control()
        || matches!(c as u32,
            0x00AD | 0x034F | 0x061C | 0x115F | 0x1160 | 0x17B4 | 0x17B5 | 0x180B..=0x180F
            | 0x0600..=0x0605 | 0x06DD | 0x070F | 0x0890 | 0x0891 | 0x08E2
            | 0x200B..=0x200F | 0x2028..=0x202E | 0x2060..=0x206F | 0x3164 | 0xFFA0
            | 0xE000..=0xF8FF | 0xFDD0..=0xFDEF | 0xFEFF | 0xFFF0..=0xFFFB | 0xFFFE | 0xFFFF)
}

fn bounded_text(field: &'static str, raw: &str, max: usize) -> Result<String, InvalidField> {
    // The bound holds for what was sent, surrounding whitespace included
    // (the schema's maxLength is the raw length); what is stored is trimmed.
    if raw.chars().count() > max {
        return Err(InvalidField::new(
            field,
            format!("must be at most {max} characters"),
        ));
    }
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
    if text.chars().any(is_disallowed_in_identifiers) {
        return Err(InvalidField::new(
            field,
            "must not contain control, invisible or text-direction characters",
        ));
    }
    Ok(text.to_owned())
}

/// A `hardware_id`: visible ASCII (`!` to `~`) with single spaces inside,
/// after the surrounding whitespace is trimmed. Machine ids are made by
/// programs (hostnames, serials, hashes); a strict class keeps two ids
/// that print alike from being two ids.
fn visible_ascii(field: &'static str, raw: &str, max: usize) -> Result<String, InvalidField> {
    let text = bounded_text(field, raw, max)?;
    if !text.bytes().all(|b| (0x20..=0x7E).contains(&b)) {
        return Err(InvalidField::new(
            field,
            "must be visible ASCII characters (! to ~) and spaces",
        ));
    }
    Ok(text)
}

macro_rules! text_newtype {
    ($(#[$doc:meta])* $name:ident, $field:literal, $max:expr) => {
        text_newtype!($(#[$doc])* $name, $field, $max, bounded_text);
    };
    ($(#[$doc:meta])* $name:ident, $field:literal, $max:expr, $check:ident) => {
        $(#[$doc])*
        #[derive(Clone, Debug, PartialEq, Eq, Hash)]
        pub struct $name(String);

        impl $name {
            pub fn parse(raw: &str) -> Result<Self, InvalidField> {
                $check($field, raw, $max).map($name)
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
    /// Identifies the machine a seat is used on (client-chosen, opaque):
    /// visible ASCII and spaces.
    HardwareId, "hardware_id", limits::HARDWARE_ID_LEN_MAX, visible_ascii
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

    /// `raw` as an account is looked up by: lower-cased, NFC, trimmed, with
    /// no other check, so that an address recorded before a rule was added
    /// still finds its account.
    pub fn for_lookup(raw: &str) -> String {
        use unicode_normalization::UnicodeNormalization;
        raw.to_lowercase()
            .nfc()
            .collect::<String>()
            .trim()
            .to_owned()
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
        assert_eq!(
            HardwareId::parse("Ada's laptop #2").unwrap().as_str(),
            "Ada's laptop #2"
        );
        for invisible in ["m\u{200b}1", "m\u{e9}", "\u{202e}m", "m\u{ff11}"] {
            assert!(HardwareId::parse(invisible).is_err(), "{invisible:?}");
        }
        // Invisible and text-direction characters in names and emails.
        for bad in [
            "\u{200b}", "\u{202e}", "\u{feff}", "\u{ffff}", "\u{2066}", "\u{3164}", "\u{e000}",
        ] {
            assert!(Name::parse(&format!("Ada{bad}")).is_err(), "{bad:?}");
            assert!(
                Email::parse(&format!("{bad}@example.com")).is_err(),
                "{bad:?}"
            );
            assert!(
                Email::parse(&format!("a{bad}b@example.com")).is_err(),
                "{bad:?}"
            );
        }
        assert_eq!(
            Name::parse("José 😀 ❤\u{fe0f}").unwrap().as_str(),
            "José 😀 ❤\u{fe0f}"
        );
        // The bound is on what was sent, surrounding whitespace included.
        assert!(Name::parse(&format!("{} ", "x".repeat(limits::NAME_LEN_MAX))).is_err());
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
