//! Rejections: the expected "no" answers, a closed enum with stable codes.
//! Unexpected failures (I/O) are `AppendError`, never a rejection.

use serde::{Deserialize, Serialize};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Rejection {
    OrganizationNotFound,
    OrganizationAlreadyExists,
    UserAlreadyExists,
    LicenseNotFound,
    LicenseAlreadyExists,
    NoSeatsAvailable,
    LicenseExpired,
    LicenseSuspended,
    LicenseRevoked,
    LicenseNotSuspended,
    SessionNotFound,
    SessionExpired,
    IdempotencyKeyReused,
    /// A heartbeat or release of a lease someone else acquired.
    NotLeaseHolder,
    /// No such (active) user in the organization.
    UserNotFound,
    /// An owner's role cannot be changed, nor an owner deactivated.
    OwnerIsPermanent,
    /// The license's `client_auth` does not let this kind of credential
    /// acquire its seats.
    ClientAuthNotAllowed,
}

impl Rejection {
    pub const ALL: [Rejection; 17] = [
        Rejection::OrganizationNotFound,
        Rejection::OrganizationAlreadyExists,
        Rejection::UserAlreadyExists,
        Rejection::LicenseNotFound,
        Rejection::LicenseAlreadyExists,
        Rejection::NoSeatsAvailable,
        Rejection::LicenseExpired,
        Rejection::LicenseSuspended,
        Rejection::LicenseRevoked,
        Rejection::LicenseNotSuspended,
        Rejection::SessionNotFound,
        Rejection::SessionExpired,
        Rejection::IdempotencyKeyReused,
        Rejection::NotLeaseHolder,
        Rejection::UserNotFound,
        Rejection::OwnerIsPermanent,
        Rejection::ClientAuthNotAllowed,
    ];

    /// The stable snake_case code clients match on.
    pub fn code(self) -> &'static str {
        match self {
            Rejection::OrganizationNotFound => "organization_not_found",
            Rejection::OrganizationAlreadyExists => "organization_already_exists",
            Rejection::UserAlreadyExists => "user_already_exists",
            Rejection::LicenseNotFound => "license_not_found",
            Rejection::LicenseAlreadyExists => "license_already_exists",
            Rejection::NoSeatsAvailable => "no_seats_available",
            Rejection::LicenseExpired => "license_expired",
            Rejection::LicenseSuspended => "license_suspended",
            Rejection::LicenseRevoked => "license_revoked",
            Rejection::LicenseNotSuspended => "license_not_suspended",
            Rejection::SessionNotFound => "session_not_found",
            Rejection::SessionExpired => "session_expired",
            Rejection::IdempotencyKeyReused => "idempotency_key_reused",
            Rejection::NotLeaseHolder => "not_lease_holder",
            Rejection::UserNotFound => "user_not_found",
            Rejection::OwnerIsPermanent => "owner_is_permanent",
            Rejection::ClientAuthNotAllowed => "client_auth_not_allowed",
        }
    }

    /// A sentence for people.
    pub fn message(self) -> &'static str {
        match self {
            Rejection::OrganizationNotFound => "organization not found",
            Rejection::OrganizationAlreadyExists => "organization already exists",
            Rejection::UserAlreadyExists => "a user with this id or email already exists",
            Rejection::LicenseNotFound => "license not found",
            Rejection::LicenseAlreadyExists => "license already exists",
            Rejection::NoSeatsAvailable => "every seat of this license is in use",
            Rejection::LicenseExpired => "the license has expired",
            Rejection::LicenseSuspended => "the license is suspended",
            Rejection::LicenseRevoked => "the license is revoked",
            Rejection::LicenseNotSuspended => "the license is not suspended",
            Rejection::SessionNotFound => "session not found",
            Rejection::SessionExpired => {
                "the session was released or has expired; acquire a new seat"
            }
            Rejection::IdempotencyKeyReused => {
                "this idempotency key was already used with a different request"
            }
            Rejection::UserNotFound => "user not found",
            Rejection::OwnerIsPermanent => {
                "an owner's role cannot be changed and an owner cannot be deactivated"
            }
            Rejection::ClientAuthNotAllowed => {
                "this license's client_auth does not let this credential acquire its seats"
            }
            Rejection::NotLeaseHolder => {
                "this lease was acquired by another user: only they may heartbeat or release it (an owner or admin may release it)"
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_the_serde_names_and_unique() {
        let mut seen = std::collections::HashSet::new();
        for rejection in Rejection::ALL {
            let json = serde_json::to_value(rejection).unwrap();
            assert_eq!(json, rejection.code());
            assert!(seen.insert(rejection.code()));
        }
    }
}
