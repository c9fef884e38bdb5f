"""The webhook signature: vectors computed here with hmac, tolerance, rotation, every malformed
header refused with its reason, round trips and tampering under hypothesis; the URL check."""

from __future__ import annotations

import hashlib
import hmac
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from otaudit_collector.core.webhook_signature import SignatureError, check_url, new_secret, secret_bytes, sign, verify

SECRET = b"whsec_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"
OTHER = b"whsec_BBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBB"
BODY = b'{"seq":1,"id":"e-1"}\n{"seq":2,"id":"e-2"}\n'
T = 1_767_225_600


def expected(secret: bytes, timestamp: int, body: bytes) -> str:
    return hmac.new(secret, str(timestamp).encode() + b"." + body, hashlib.sha256).hexdigest()


def test_sign_matches_an_independent_hmac() -> None:
    assert sign(SECRET, T, BODY) == f"t={T},v1={expected(SECRET, T, BODY)}"
    assert sign(SECRET, 0, b"") == f"t=0,v1={expected(SECRET, 0, b'')}"


def test_the_vector_in_the_module_docstring() -> None:
    from otaudit_collector.core import webhook_signature

    header = "t=1767225600,v1=07c4faeb4ffae013647dce3d0e0e339ab8675804950e9fec72a33f85c9c07422"
    assert header in (webhook_signature.__doc__ or "")
    assert sign(SECRET, 1767225600, b'{"seq":1}\n') == header
    assert expected(SECRET, 1767225600, b'{"seq":1}\n') == header.split("v1=")[1]


def test_verify_accepts_within_tolerance_on_both_sides() -> None:
    header = sign(SECRET, T, BODY)
    for now in (T, T + 300, T - 300, T + 299.9, T - 0.5):
        verify(SECRET, header, BODY, now=now)
    verify(SECRET, header, BODY, now=T + 1000, tolerance_seconds=1000)


def test_verify_refuses_old_and_future_signatures() -> None:
    header = sign(SECRET, T, BODY)
    with pytest.raises(SignatureError, match=r"is 301 seconds old, beyond the tolerance of 300 seconds"):
        verify(SECRET, header, BODY, now=T + 301)
    with pytest.raises(SignatureError, match=r"is 400 seconds in the future, beyond the tolerance of 300 seconds"):
        verify(SECRET, header, BODY, now=T - 400)
    with pytest.raises(SignatureError, match=r"seconds old, beyond the tolerance of 10 seconds"):
        verify(SECRET, header, BODY, now=T + 11, tolerance_seconds=10)
    with pytest.raises(ValueError, match="tolerance_seconds is at least 0"):
        verify(SECRET, header, BODY, now=T, tolerance_seconds=-1)


def test_an_old_forgery_is_refused_for_its_signature_first() -> None:
    """Time is judged only on authentic requests: a forged old request hears "does not match"."""
    header = sign(OTHER, T, BODY)
    with pytest.raises(SignatureError, match="does not match"):
        verify(SECRET, header, BODY, now=T + 10_000)


def test_rotation_any_of_several_v1_matches() -> None:
    old, new = expected(OTHER, T, BODY), expected(SECRET, T, BODY)
    for header in (f"t={T},v1={old},v1={new}", f"t={T},v1={new},v1={old}", f"v1={old}, t={T}, v1={new}"):
        verify(SECRET, header, BODY, now=T)
        verify(OTHER, header, BODY, now=T)
    third = b"whsec_CCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCC"
    with pytest.raises(SignatureError, match="none of the 2 v1 signatures match the body under this secret"):
        verify(third, f"t={T},v1={old},v1={new}", BODY, now=T)


def test_unknown_schemes_are_ignored_and_uppercase_hex_accepted() -> None:
    good = expected(SECRET, T, BODY)
    verify(SECRET, f"t={T},v0=whatever,v1={good},v2=future", BODY, now=T)
    verify(SECRET, f"t={T},v1={good.upper()}", BODY, now=T)


def test_wrong_secret_or_changed_body_does_not_match() -> None:
    header = sign(SECRET, T, BODY)
    with pytest.raises(SignatureError, match=r"^the v1 signature does not match the body under this secret: a wrong secret"):
        verify(OTHER, header, BODY, now=T)
    with pytest.raises(SignatureError, match="or the body was changed"):
        verify(SECRET, header, BODY + b" ", now=T)
    with pytest.raises(SignatureError, match="does not match"):
        verify(SECRET, header.replace(f"t={T}", f"t={T + 1}"), BODY, now=T)


GOOD_HEX = "0" * 64


@pytest.mark.parametrize(
    ("header", "reason"),
    [
        (None, r"^no Otaudit-Signature header: the request is not signed$"),
        ("", r"^no Otaudit-Signature header"),
        ("   ", r"^no Otaudit-Signature header"),
        (
            "garbage",
            r"^malformed Otaudit-Signature header: item 1 is not key=value \(expected t=<unix seconds>,v1=<hex HMAC-SHA256>\)$",
        ),
        (f"t={T},,v1={GOOD_HEX}", r"item 2 is not key=value"),
        (f"t={T},=x,v1={GOOD_HEX}", r"item 2 is not key=value"),
        (f"v1={GOOD_HEX}", r"no t=<unix seconds>"),
        (f"t={T}", r"no v1 signature"),
        (f"t={T},v0={GOOD_HEX}", r"no v1 signature"),
        (f"t={T},t={T},v1={GOOD_HEX}", r"t appears more than once"),
        (f"t=-5,v1={GOOD_HEX}", r"t is not a whole number of seconds since 1970"),
        (f"t=12.5,v1={GOOD_HEX}", r"t is not a whole number of seconds"),
        (f"t=,v1={GOOD_HEX}", r"t is not a whole number of seconds"),
        (f"t=1e9,v1={GOOD_HEX}", r"t is not a whole number of seconds"),
        (f"t={'9' * 16},v1={GOOD_HEX}", r"t is not a whole number of seconds"),
        (f"t={T},v1=abc", r"v1 number 1 is not 64 hex digits"),
        (f"t={T},v1={GOOD_HEX},v1={'g' * 64}", r"v1 number 2 is not 64 hex digits"),
        (f"t={T},v1={GOOD_HEX}0", r"v1 number 1 is not 64 hex digits"),
        (f"t={T},v1=", r"v1 number 1 is not 64 hex digits"),
    ],
)
def test_malformed_headers_are_refused_saying_why(header: str | None, reason: str) -> None:
    with pytest.raises(SignatureError, match=reason) as caught:
        verify(SECRET, header, BODY, now=T)
    assert "whsec_" not in str(caught.value)


def test_new_secret_and_its_bytes() -> None:
    secret = new_secret()
    assert re.fullmatch(r"whsec_[A-Za-z0-9_-]{43}", secret)
    assert secret != new_secret()
    assert secret_bytes(secret) == secret.encode("ascii")
    assert secret_bytes(f"  {secret}\n") == secret.encode("ascii")
    header = sign(secret_bytes(secret), T, BODY)
    assert header == f"t={T},v1={expected(secret.encode(), T, BODY)}"


@pytest.mark.parametrize(
    "text", ["", "whsec_", "whsec_short", "sk_" + "A" * 43, "whsec_" + "A" * 30 + " " + "A" * 12, "whsec_" + "é" * 40]
)
def test_secret_bytes_refuses_what_is_not_a_secret(text: str) -> None:
    with pytest.raises(ValueError, match=r"a webhook secret reads whsec_ followed by at least 32 characters"):
        secret_bytes(text)


@settings(max_examples=200, deadline=None)
@given(secret=st.binary(min_size=1, max_size=64), timestamp=st.integers(0, 10**12), body=st.binary(max_size=2048))
def test_round_trip(secret: bytes, timestamp: int, body: bytes) -> None:
    header = sign(secret, timestamp, body)
    verify(secret, header, body, now=timestamp)
    assert header.split("v1=")[1] == expected(secret, timestamp, body)


@settings(max_examples=200, deadline=None)
@given(body=st.binary(min_size=1, max_size=512), data=st.data())
def test_any_changed_byte_fails(body: bytes, data: st.DataObject) -> None:
    header = sign(SECRET, T, body)
    index = data.draw(st.integers(0, len(body) - 1), label="index")
    flip = data.draw(st.integers(1, 255), label="xor")
    changed = bytearray(body)
    changed[index] ^= flip
    with pytest.raises(SignatureError, match="does not match"):
        verify(SECRET, header, bytes(changed), now=T)


@settings(max_examples=200, deadline=None)
@given(data=st.data())
def test_any_changed_signature_digit_fails(data: st.DataObject) -> None:
    header = sign(SECRET, T, BODY)
    start = header.index("v1=") + 3
    index = data.draw(st.integers(start, len(header) - 1), label="index")
    digit = data.draw(st.sampled_from("0123456789abcdef").filter(lambda c: c != header[index]), label="digit")
    with pytest.raises(SignatureError, match="does not match"):
        verify(SECRET, header[:index] + digit + header[index + 1 :], BODY, now=T)


@pytest.mark.parametrize(
    "url",
    [
        "https://siem.example.com/in",
        "http://127.0.0.1:8080/hook?x=1",
        "https://[::1]:8443/",
        "HTTPS://Example.COM",
        "https://bücher.example/in",
    ],
)
def test_check_url_accepts(url: str) -> None:
    assert check_url(url) is None


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("", "is empty"),
        ("siem.example.com/in", "must start with https:// or http://, not no scheme"),
        ("ftp://siem.example.com/in", "must start with https:// or http://, not ftp://"),
        ("file:///etc/passwd", "not file://"),
        ("https://", "has no host"),
        ("https:///path", "has no host"),
        ("https://user:pw@siem.example.com/", "holds a user name or password"),
        ("https://token@siem.example.com/", "holds a user name or password"),
        ("https://siem.example.com/in#frag", "#fragment"),
        ("https://siem.example.com:99999/", "cannot be read"),
        ("https://siem.example.com:0/", "port is 0"),
        ("https://siem.example.com/a b", "spaces or control characters"),
        ("https://siem.example.com/\r\nX: y", "spaces or control characters"),
        ("https://siem.example.com/" + "a" * 2100, "more than 2,048"),
    ],
)
def test_check_url_refuses_saying_why(url: str, reason: str) -> None:
    problem = check_url(url)
    assert problem is not None
    assert reason in problem
