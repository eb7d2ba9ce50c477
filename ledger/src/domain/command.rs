//! Commands: what a caller asks the ledger to do, in the imperative. Every
//! field is already parsed (see `types`), so `decide` only checks business
//! rules.

use super::types::*;
use seatledger_schema::{ClientAuth, Role, Timestamp};
use seatledger_schema::{LicenseId, OrgId, SessionId, TokenId, UserId};

/// Who asks for a heartbeat or a release (seat authority).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SeatActor {
    /// Not checked: replays, simulations and the operator's own tools.
    Unchecked,
    /// A user: may heartbeat and release only the leases they acquired.
    Holder(UserId),
    /// An owner or admin: may also release (not heartbeat) another user's
    /// lease of the organization, recorded with reason `admin`.
    Admin(UserId),
    /// The bearer of the lease's own token (`Authorization: Lease …`),
    /// which only the acquire of that lease answered: acts as its holder.
    /// The API checks that the token is the lease's before it says so.
    Lease,
}

/// What an acquire's caller authenticated with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AcquireCredential {
    /// Not checked: replays, simulations and the operator's own tools.
    Unchecked,
    /// An API token (a user's or a client token).
    Token,
    /// The license key alone (`Authorization: License <key>`); the lease
    /// has no user (`user_id` is nil).
    LicenseKey,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Command {
    /// Registers an organization, and with `owner` its first user, in one
    /// append.
    RegisterOrganization {
        org_id: OrgId,
        name: Name,
        owner: Option<NewUser>,
    },
    /// Sets a user's role (`admin` or `member`; owners stay owners).
    ChangeUserRole {
        org_id: OrgId,
        user_id: UserId,
        role: Role,
    },
    /// Deactivates a user (not an owner).
    DeactivateUser { org_id: OrgId, user_id: UserId },
    RegisterUser {
        org_id: OrgId,
        user_id: UserId,
        email: Email,
        full_name: Name,
        role: Role,
    },
    IssueLicense {
        /// Who may acquire its seats.
        client_auth: ClientAuth,
        license_id: LicenseId,
        name: Name,
        seats: SeatCount,
        expires_at: Option<Timestamp>,
        heartbeat_ttl_s: HeartbeatTtl,
        max_overage_percent: OveragePercent,
    },
    ChangeSeats {
        license_id: LicenseId,
        seats: SeatCount,
    },
    RenewLicense {
        license_id: LicenseId,
        expires_at: Option<Timestamp>,
    },
    /// Seats and/or expiry in one append (an admin's PATCH); absent fields
    /// are left as they are, `Some(None)` removes the expiry.
    UpdateLicense {
        license_id: LicenseId,
        seats: Option<SeatCount>,
        expires_at: Option<Option<Timestamp>>,
    },
    SuspendLicense {
        license_id: LicenseId,
        reason: Option<Reason>,
    },
    ReinstateLicense {
        license_id: LicenseId,
        reason: Option<Reason>,
    },
    RevokeLicense {
        license_id: LicenseId,
        reason: Option<Reason>,
    },
    /// `session_id` is used if a new lease is granted; a re-acquire keeps
    /// the existing lease's id.
    AcquireSeat {
        license_id: LicenseId,
        session_id: SessionId,
        user_id: UserId,
        hardware_id: HardwareId,
        /// The client token acquiring (then `user_id` is its id), if any.
        token_id: Option<TokenId>,
        /// What the caller authenticated with, checked against the
        /// license's `client_auth`.
        credential: AcquireCredential,
    },
    Heartbeat {
        license_id: LicenseId,
        session_id: SessionId,
        by: SeatActor,
    },
    ReleaseSeat {
        license_id: LicenseId,
        session_id: SessionId,
        by: SeatActor,
    },
    /// The reaper's: expires the lease if its `expires_at` has passed.
    ExpireSeat {
        license_id: LicenseId,
        session_id: SessionId,
    },
    /// `seatledger admin prune`'s: records that a segment left the live
    /// database for an archive file (on the stream `log-{partition}`).
    RecordPrune(seatledger_schema::LogPruned),
}

/// A user registered together with a new organization.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewUser {
    pub user_id: UserId,
    pub email: Email,
    pub full_name: Name,
    pub role: Role,
}

pub use seatledger_schema::StreamId;

impl Command {
    pub fn stream_id(&self) -> StreamId {
        match self {
            Command::RegisterOrganization { org_id, .. }
            | Command::RegisterUser { org_id, .. }
            | Command::ChangeUserRole { org_id, .. }
            | Command::DeactivateUser { org_id, .. } => StreamId::Org(*org_id),
            Command::IssueLicense { license_id, .. }
            | Command::ChangeSeats { license_id, .. }
            | Command::RenewLicense { license_id, .. }
            | Command::UpdateLicense { license_id, .. }
            | Command::SuspendLicense { license_id, .. }
            | Command::ReinstateLicense { license_id, .. }
            | Command::RevokeLicense { license_id, .. }
            | Command::AcquireSeat { license_id, .. }
            | Command::Heartbeat { license_id, .. }
            | Command::ReleaseSeat { license_id, .. }
            | Command::ExpireSeat { license_id, .. } => StreamId::License(*license_id),
            Command::RecordPrune(pruned) => StreamId::Log(pruned.partition),
        }
    }

    /// A stable name for logs and metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            Command::RegisterOrganization { .. } => "register_organization",
            Command::RegisterUser { .. } => "register_user",
            Command::ChangeUserRole { .. } => "change_user_role",
            Command::DeactivateUser { .. } => "deactivate_user",
            Command::IssueLicense { .. } => "issue_license",
            Command::ChangeSeats { .. } => "change_seats",
            Command::RenewLicense { .. } => "renew_license",
            Command::UpdateLicense { .. } => "update_license",
            Command::SuspendLicense { .. } => "suspend_license",
            Command::ReinstateLicense { .. } => "reinstate_license",
            Command::RevokeLicense { .. } => "revoke_license",
            Command::AcquireSeat { .. } => "acquire_seat",
            Command::Heartbeat { .. } => "heartbeat",
            Command::ReleaseSeat { .. } => "release_seat",
            Command::ExpireSeat { .. } => "expire_seat",
            Command::RecordPrune(_) => "record_prune",
        }
    }
}
