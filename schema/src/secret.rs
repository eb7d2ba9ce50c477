//! Secrets a client sends or is shown once: a [`Password`], a
//! [`LicenseKey`], an [`ApiToken`]. Their `Debug` is redacted, so a
//! secret cannot reach a log line through `{:?}` of a request or a
//! struct that holds it; the text is read only through
//! [`expose`](Password::expose), which says at the call site that a secret
//! is used. They serialize as the plain string (a token is shown once in an
//! answer; a password arrives in a request body).

use serde::{Deserialize, Serialize};
use std::fmt;

macro_rules! secret {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Clone, Serialize, Deserialize)]
        #[serde(transparent)]
        pub struct $name(String);

        impl $name {
            pub fn new(text: impl Into<String>) -> Self {
                $name(text.into())
            }

            /// The secret's text.
            pub fn expose(&self) -> &str {
                &self.0
            }

            /// The secret's text, owned.
            pub fn into_exposed(self) -> String {
                self.0
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}(<redacted>)", stringify!($name))
            }
        }
    };
}

secret!(
    /// A user's password, as typed.
    Password
);
secret!(
    /// A license's key: what a client app presents to acquire a seat.
    LicenseKey
);
secret!(
    /// A bearer token of the API (`sl_…`).
    ApiToken
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_never_shows_the_secret() {
        let password = Password::new("hunter22");
        let key = LicenseKey::new("SL-ABCD");
        let token = ApiToken::new("sl_secret");
        let shown = format!("{password:?} {key:?} {token:?} {:?}", Some(&token));
        assert_eq!(
            shown,
            "Password(<redacted>) LicenseKey(<redacted>) ApiToken(<redacted>) Some(ApiToken(<redacted>))"
        );
        assert!(
            !shown.contains("hunter22") && !shown.contains("ABCD") && !shown.contains("secret")
        );
        assert_eq!(token.expose(), "sl_secret");
    }

    #[test]
    fn a_secret_serializes_as_its_plain_text() {
        let token: ApiToken = serde_json::from_str("\"sl_x\"").unwrap();
        assert_eq!(token.expose(), "sl_x");
        assert_eq!(serde_json::to_string(&token).unwrap(), "\"sl_x\"");
    }
}
