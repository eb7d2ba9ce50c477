"""Schemathesis hooks for seatledger's contract run (scripts/contract/run).

Long-polls of the events feed are shortened (see map_query).

A header value with a control character (other than tab) is not HTTP
(RFC 9110 section 5.5): hyper refuses such a request with a bare 400
before any handler runs, so no route can answer it with problem+json.
Negative tests of header parameters (Idempotency-Key) that would send one
are left out; every other negative value is still sent.
"""

import schemathesis


@schemathesis.hook
def map_query(context, query):
    """Shortens long-polls of GET /api/v1/events to at most a second.

    A valid `wait_s` (0 to 20) makes a request with nothing after `after`
    wait that long; at 20 s an example the run would spend minutes waiting.
    Valid values above 1 become 1 (still valid, still a wait); invalid ones
    (negative, over 20, not a number) are sent as drawn.
    """
    if query and isinstance(query.get("wait_s"), int) and not isinstance(query["wait_s"], bool):
        if 1 < query["wait_s"] <= 20:
            query["wait_s"] = 1
    return query


def _sendable(value):
    text = value if isinstance(value, str) else str(value)
    return not any((ord(c) < 0x20 and c != "\t") or ord(c) == 0x7F for c in text)


@schemathesis.hook
def filter_headers(context, headers):
    return headers is None or all(_sendable(v) for v in headers.values())


_calls = 0


@schemathesis.hook
def before_call(context, case, kwargs):
    """Makes every valid Idempotency-Key unique to its call.

    A key the run already sent with another body is refused with 422
    `idempotency_key_reused` (as the IETF Idempotency-Key draft asks), which
    is right but depends on what the run sent before, not on the request.
    Invalid keys (empty, too long, outside visible ASCII) are left as they
    are, so negative tests still send them.
    """
    global _calls
    headers = case.headers or {}
    for name in list(headers):
        if name.lower() != "idempotency-key":
            continue
        key = headers[name]
        if isinstance(key, str) and 0 < len(key) <= 180 and all(0x21 <= ord(c) <= 0x7E for c in key):
            _calls += 1
            headers[name] = f"{key}-{_calls}"
