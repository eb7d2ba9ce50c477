-- Live billing (seatledger-projections billing_live): the billing fold's
-- output, written with its checkpoint (follower_checkpoints 'billing') in
-- one transaction. A projection: it can be dropped and rebuilt from the
-- log. uuids as text and instants as microseconds since 1970, the same on
-- PostgreSQL and SQLite, so both run the same statements.

-- Per organization, granularity (hour, day, month), license and period:
-- what closed leases, grants and denials left there.
CREATE TABLE usage_periods (
    org_id              TEXT NOT NULL,
    granularity         TEXT NOT NULL,
    license_id          TEXT NOT NULL,
    period_start        INTEGER NOT NULL,
    seat_micros         INTEGER NOT NULL,
    overage_seat_micros INTEGER NOT NULL,
    peak_at_grant       INTEGER NOT NULL,
    carried_in          INTEGER NOT NULL,
    denials             INTEGER NOT NULL,
    PRIMARY KEY (org_id, granularity, license_id, period_start)
);

-- The distinct users and machines of each period's closed leases.
CREATE TABLE usage_users (
    org_id       TEXT NOT NULL,
    granularity  TEXT NOT NULL,
    license_id   TEXT NOT NULL,
    period_start INTEGER NOT NULL,
    user_id      TEXT NOT NULL,
    PRIMARY KEY (org_id, granularity, license_id, period_start, user_id)
);

CREATE TABLE usage_machines (
    org_id       TEXT NOT NULL,
    granularity  TEXT NOT NULL,
    license_id   TEXT NOT NULL,
    period_start INTEGER NOT NULL,
    hardware_id  TEXT NOT NULL,
    PRIMARY KEY (org_id, granularity, license_id, period_start, hardware_id)
);

-- Leases granted and not yet released or expired.
CREATE TABLE usage_open_leases (
    session_id  TEXT PRIMARY KEY,
    partition   INTEGER NOT NULL,
    org_id      TEXT NOT NULL,
    license_id  TEXT NOT NULL,
    start_at    INTEGER NOT NULL,
    expires_at  INTEGER NOT NULL,
    user_id     TEXT NOT NULL,
    hardware_id TEXT NOT NULL,
    overage     INTEGER NOT NULL
);
CREATE INDEX usage_open_leases_org ON usage_open_leases (org_id, license_id);
-- The reaper's source while Redis is down.
CREATE INDEX usage_open_leases_expiry ON usage_open_leases (partition, expires_at);

-- Events billing could not decode: their organization's report is refused
-- rather than short.
CREATE TABLE usage_incomplete (
    partition INTEGER NOT NULL,
    position  INTEGER NOT NULL,
    org_id    TEXT NOT NULL,
    PRIMARY KEY (partition, position)
);
