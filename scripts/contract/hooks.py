"""Schemathesis hooks for seatledger's contract run (scripts/contract/run).

A header value with a control character (other than tab) is not HTTP
(RFC 9110 section 5.5): hyper refuses such a request with a bare 400
before any handler runs, so no route can answer it with problem+json.
Negative tests of header parameters (Idempotency-Key) that would send one
are left out; every other negative value is still sent.
"""

import schemathesis


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
