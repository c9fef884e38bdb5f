"""RFC 5424 messages and octet-counting frames of core/syslog_format.py, byte for byte."""

from __future__ import annotations

import pytest

from otaudit_collector.core.syslog_format import (
    SyslogFormat,
    check_sd_id,
    clean_hostname,
    frame,
    severity_of,
    timestamp_of,
)
from otaudit_collector.streams.transport import Record

BOM = b"\xef\xbb\xbf"
TEXT = (
    '{"seq":7,"id":"e-7","event":"user.role_updated","occurred_at":"2026-11-21T10:15:30.123456Z",'
    '"category":"iam","outcome":"denied","note":"ü"}'
)


def test_a_denied_event_is_a_warning_of_log_audit() -> None:
    message = SyslogFormat("collector-1").message(Record(7, "e-7", TEXT), "acme")
    assert message == (
        b"<108>1 2026-11-21T10:15:30.123456Z collector-1 otaudit - user.role_updated "
        b'[otaudit@32473 tenant="acme" seq="7" id="e-7" category="iam" outcome="denied"] ' + BOM + TEXT.encode()
    )
    assert frame(message) == b"%d " % len(message) + message
    assert frame(b"<1>1 - - - - - -") == b"16 <1>1 - - - - - -"


def test_success_is_notice_and_settings_change_pri_hostname_and_sd_id() -> None:
    text = '{"seq":1,"id":"a","event":"login","occurred_at":"2026-01-02T03:04:05Z","category":"auth","outcome":"success"}'
    form = SyslogFormat("10.0.0.1", facility=4, sd_id="audit@1.2.3")
    assert form.message(Record(1, "a", text), "t") == (
        b'<37>1 2026-01-02T03:04:05Z 10.0.0.1 otaudit - login [audit@1.2.3 tenant="t" seq="1" id="a" category="auth" '
        b'outcome="success"] ' + BOM + text.encode()
    )
    assert severity_of("success") == 5
    assert severity_of("failure") == severity_of("denied") == severity_of(None) == 4


def test_param_values_escape_quote_backslash_bracket_and_drop_controls() -> None:
    text = '{"event":"ev ent/ü","category":"a\\"b]c\\\\d\\u0007","outcome":"failure"}'
    message = SyslogFormat("h").frames([Record(2, 'i"d]', text)], 'te\\n"ant]')
    body = b'<108>1 - h otaudit - event/ [otaudit@32473 tenant="te\\\\n\\"ant\\]" seq="2" id="i\\"d\\]" '
    body += b'category="a\\"b\\]c\\\\d" outcome="failure"] ' + BOM + text.encode()
    assert message == b"%d " % len(body) + body


def test_a_record_that_is_no_json_object_keeps_its_text_and_header_nils() -> None:
    body = b'<108>1 - h otaudit - - [otaudit@32473 tenant="t" seq="3" id="x"] ' + BOM + b"not json"
    assert SyslogFormat("h").message(Record(3, "x", "not json"), "t") == body


def test_several_records_are_frames_one_after_the_other() -> None:
    records = [Record(n, f"e{n}", f'{{"seq":{n},"outcome":"success"}}') for n in (1, 2)]
    framed = SyslogFormat("h").frames(records, "t")
    first = SyslogFormat("h").message(records[0], "t")
    second = SyslogFormat("h").message(records[1], "t")
    assert framed == b"%d %s%d %s" % (len(first), first, len(second), second)


@pytest.mark.parametrize("text", ['{"a":1}\n', '{"a":\r1}', '{"a":"\0"}'])
def test_line_breaks_and_nul_are_refused(text: str) -> None:
    with pytest.raises(ValueError, match="record seq 9 holds a line break or a NUL"):
        SyslogFormat("h").message(Record(9, "x", text), "t")


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("2026-11-21T10:15:30.123456Z", "2026-11-21T10:15:30.123456Z"),
        ("2026-11-21T10:15:30.123456789Z", "2026-11-21T10:15:30.123456Z"),
        ("2026-11-21T10:15:30.1z", "2026-11-21T10:15:30.1Z"),
        ("2026-11-21t01:15:30+02:30", "2026-11-20T22:45:30Z"),
        ("0001-01-01T00:00:00Z", "0001-01-01T00:00:00Z"),
        ("2026-11-21T10:15:60Z", "-"),
        ("2026-11-21 10:15:30Z", "-"),
        ("2026-11-21T10:15:30", "-"),
        (None, "-"),
        (17, "-"),
    ],
)
def test_timestamps(given: object, expected: str) -> None:
    assert timestamp_of(given) == expected


def test_hostnames_and_settings_are_checked() -> None:
    assert clean_hostname("büro host\t1") == "brohost1"
    assert clean_hostname("ü") == "-"
    assert clean_hostname("x" * 300) == "x" * 255
    for bad in ("", "has space", "bü", "x" * 256):
        with pytest.raises(ValueError, match="set the stream's hostname"):
            SyslogFormat(bad)
    for bad_facility in (-1, 24, True):
        with pytest.raises(ValueError, match="0 to 23"):
            SyslogFormat("h", facility=bad_facility)
    assert check_sd_id("otaudit@32473") == "otaudit@32473"
    for bad_id in ("otaudit", "otaudit@", "@32473", "a@b@1", "o=t@1", "o t@1", "o]@1", 'o"@1', "x@01", "a" * 30 + "@12"):
        with pytest.raises(ValueError, match="IANA PEN"):
            check_sd_id(bad_id)
