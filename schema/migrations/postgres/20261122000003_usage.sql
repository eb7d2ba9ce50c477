-- Live billing (seatledger-projections billing_live): the billing fold's
-- output, written with its checkpoint (follower_checkpoints 'billing') in
-- one transaction. A projection: it can be dropped and rebuilt from the
-- log. uuids as text and instants as microseconds since 1970, the same on
-- PostgreSQL and SQLite, so both run the same statements.

-- Per organization, granularity (hour, day, month), license and period:
-- what closed leases, grants and denials left there.
CREATE TABLE usage_periods (
    org_id              text NOT NULL,
    granularity         text NOT NULL,
    license_id          text NOT NULL,
    period_start        bigint NOT NULL,
    seat_micros         bigint NOT NULL,
    overage_seat_micros bigint NOT NULL,
    peak_at_grant       bigint NOT NULL,
    carried_in          bigint NOT NULL,
    denials             bigint NOT NULL,
    PRIMARY KEY (org_id, granularity, license_id, period_start)
);

-- The distinct users and machines of each period's closed leases.
CREATE TABLE usage_users (
    org_id       text NOT NULL,
    granularity  text NOT NULL,
    license_id   text NOT NULL,
    period_start bigint NOT NULL,
    user_id      text NOT NULL,
    PRIMARY KEY (org_id, granularity, license_id, period_start, user_id)
);

CREATE TABLE usage_machines (
    org_id       text NOT NULL,
    granularity  text NOT NULL,
    license_id   text NOT NULL,
    period_start bigint NOT NULL,
    hardware_id  text NOT NULL,
    PRIMARY KEY (org_id, granularity, license_id, period_start, hardware_id)
);

-- Leases granted and not yet released or expired.
CREATE TABLE usage_open_leases (
    session_id  text PRIMARY KEY,
    partition   smallint NOT NULL,
    org_id      text NOT NULL,
    license_id  text NOT NULL,
    start_at    bigint NOT NULL,
    expires_at  bigint NOT NULL,
    user_id     text NOT NULL,
    hardware_id text NOT NULL,
    overage     boolean NOT NULL
);
CREATE INDEX usage_open_leases_org ON usage_open_leases (org_id, license_id);
-- The reaper's source while Redis is down.
CREATE INDEX usage_open_leases_expiry ON usage_open_leases (partition, expires_at);

-- Events billing could not decode: their organization's report is refused
-- rather than short.
CREATE TABLE usage_incomplete (
    partition smallint NOT NULL,
    position  bigint NOT NULL,
    org_id    text NOT NULL,
    PRIMARY KEY (partition, position)
);
