"""C2SP signed notes: the specification's and Go's examples, round trips, and every rejection."""

from __future__ import annotations

import base64
import hashlib

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from otaudit_verify.note import (
    ALG_ED25519,
    MAX_SIGNATURES,
    NoteError,
    Signature,
    Signer,
    Verifier,
    check_key_name,
    generate_signer,
    key_id,
    load_signer_seed,
    open_note,
    parse_signer_key,
    parse_verifier_key,
    seed_text,
    sign_note,
    signatures_of,
)

# c2sp.org/signed-note, "Verifier keys", "Example".
SPEC_VKEY = "example.com/foo+530d903a+AekyeRrm56hApGFkyQR4ZCbV54Id2LKaANYcrnKv3U2k"
SPEC_TEXT = "This is an example message.\n"
SPEC_NOTE = (
    SPEC_TEXT + "\n"
    "— example.com/foo Uw2QOkn8srV1yJGh2VYRlL1Tnagv1YEq6TfXppzi2ONncAlTgK7Ztg1ERYNZXsYjOBH3mFXmRKuwHjG1Yu72IneyaQM=\n"
)

# The example in the documentation of golang.org/x/mod/sumdb/note (the reference implementation).
GO_SKEY = "PRIVATE+KEY+PeterNeumann+c74f20a3+AYEKFALVFGyNhPJEMzD1QIDr+Y7hfZx09iUvxdXHKDFz"
GO_VKEY = "PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW"
GO_TEXT = "If you think cryptography is the answer to your problem,\nthen you don't know what your problem is.\n"
GO_NOTE = (
    GO_TEXT + "\n— PeterNeumann x08go/ZJkuBS9UG/SffcvIAQxVBtiFupLLr8pAcElZInNIuGUgYN1FFYC2pZSNXgKvqfqdngotpRZb6KE6RyyBwJnAM=\n"
)


def fixed_signer(name: str = "otaudit.example/acme", seed: int = 7) -> Signer:
    return Signer(name, Ed25519PrivateKey.from_private_bytes(bytes([seed]) * 32))


# --- the examples -------------------------------------------------------------------------


def test_key_id_is_the_first_four_bytes_of_the_specified_hash() -> None:
    verifier = parse_verifier_key(SPEC_VKEY)
    public = base64.b64decode(SPEC_VKEY.split("+")[2])[1:]
    expected = hashlib.sha256(b"example.com/foo" + b"\n" + b"\x01" + public).digest()[:4]
    assert key_id("example.com/foo", public) == expected == bytes.fromhex("530d903a") == verifier.id
    assert verifier.public_key == public
    assert ALG_ED25519 == 0x01


def test_spec_example_verifies() -> None:
    verifier = parse_verifier_key(SPEC_VKEY)
    opened = open_note(SPEC_NOTE, [verifier])
    assert opened.text == SPEC_TEXT
    assert [(s.name, s.id.hex()) for s in opened.verified] == [("example.com/foo", "530d903a")]
    assert opened.unverified == ()
    assert verifier.vkey() == SPEC_VKEY
    assert open_note(SPEC_NOTE.encode("utf-8"), [verifier]).text == SPEC_TEXT


def test_go_reference_example_signs_byte_for_byte() -> None:
    signer = parse_signer_key(GO_SKEY)  # its base64 holds a '+'
    assert signer.name == "PeterNeumann"
    assert signer.id.hex() == "c74f20a3"
    assert signer.skey() == GO_SKEY
    assert signer.verifier().vkey() == GO_VKEY
    assert parse_verifier_key(GO_VKEY) == signer.verifier()
    assert sign_note(GO_TEXT, signer) == GO_NOTE  # Ed25519 is deterministic
    assert open_note(GO_NOTE, [parse_verifier_key(GO_VKEY)]).text == GO_TEXT


@pytest.mark.parametrize(
    "tampered",
    [
        SPEC_NOTE.replace("example message", "example massage"),
        SPEC_NOTE.replace("This is", "This was"),
        SPEC_NOTE.replace("Uw2QOkn8", "Uw2QOkn9"),  # the signature, key ID unchanged
        "Extra line.\n" + SPEC_NOTE,
    ],
)
def test_a_tampered_note_does_not_verify(tampered: str) -> None:
    with pytest.raises(NoteError, match="does not verify"):
        open_note(tampered, [parse_verifier_key(SPEC_VKEY)])


# --- signing and opening ------------------------------------------------------------------


def test_sign_open_round_trip() -> None:
    signer = generate_signer("otaudit.example/acme")
    text = "otaudit.example/acme\n3\nAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=\n"
    note = sign_note(text, signer)
    head, sig_line = note.rsplit("\n\n", 1)
    assert head + "\n" == text
    name, b64 = sig_line.removeprefix("— ").removesuffix("\n").split(" ")
    raw = base64.b64decode(b64)
    assert name == signer.name and raw[:4] == signer.id and len(raw) == 68
    opened = open_note(note, [signer.verifier()])
    assert opened.text == text
    assert opened.verified == (Signature(signer.name, signer.id, raw[4:]),)
    assert signatures_of(note) == (text, opened.verified)


def test_text_with_empty_lines_is_split_at_the_last_blank_line() -> None:
    signer = fixed_signer()
    for text in ["a\n\nb\n", "a\n\n", "\n", "x\n\n\n"]:
        assert open_note(sign_note(text, signer), [signer.verifier()]).text == text


def test_several_signers_and_unknown_signatures_are_ignored() -> None:
    log, witness, stranger = fixed_signer(seed=1), fixed_signer("witness.example", seed=2), fixed_signer("other.example", 3)
    note = sign_note("hello\n", log, witness, stranger)
    opened = open_note(note, [log.verifier()])
    assert [s.name for s in opened.verified] == [log.name]
    assert [s.name for s in opened.unverified] == [witness.name, stranger.name]
    both = open_note(note, [witness.verifier(), log.verifier()])
    assert [s.name for s in both.verified] == [log.name, witness.name]


def test_a_key_with_the_same_name_but_another_id_is_unknown_not_failing() -> None:
    signer, impostor = fixed_signer(seed=1), fixed_signer(seed=2)  # same name, other key
    note = sign_note("hello\n", impostor, signer)
    opened = open_note(note, [signer.verifier()])
    assert [s.id for s in opened.verified] == [signer.id]
    assert [s.id for s in opened.unverified] == [impostor.id]
    with pytest.raises(NoteError, match="not signed by a trusted key"):
        open_note(sign_note("hello\n", impostor), [signer.verifier()])


def test_a_note_signed_only_by_unknown_keys_is_rejected() -> None:
    note = sign_note("hello\n", fixed_signer(seed=1))
    with pytest.raises(NoteError, match=r"not signed by a trusted key: signed by otaudit\.example/acme \([0-9a-f]{8}\)"):
        open_note(note, [fixed_signer("other.example").verifier()])
    with pytest.raises(NoteError, match="trusted: none"):
        open_note(note, [])


def test_a_known_key_that_signed_twice_is_rejected() -> None:
    signer = fixed_signer()
    note = sign_note("hello\n", signer)
    line = note.split("\n\n")[1]
    with pytest.raises(NoteError, match="two signatures from key"):
        open_note(note + line, [signer.verifier()])
    # Identical unknown signatures are kept once.
    stranger_line = sign_note("hello\n", fixed_signer("y.example")).split("\n\n")[1]
    opened = open_note(note + stranger_line + stranger_line, [signer.verifier()])
    assert len(opened.verified) == 1
    assert opened.unverified == signatures_of(note + stranger_line)[1][1:]


def test_trusted_keys_that_collide_are_refused() -> None:
    # Two different public keys under one name with one key ID cannot be told apart.
    a = Verifier("example.com/foo", bytes(range(32)))
    b = Verifier("example.com/foo", bytes(range(1, 33)))
    object.__setattr__(b, "_id", a.id)
    with pytest.raises(NoteError, match="share name"):
        open_note(SPEC_NOTE, [a, b])


def test_the_same_key_signs_under_several_names() -> None:
    key = Ed25519PrivateKey.from_private_bytes(bytes(32))
    acme, globex = Signer("otaudit.example/acme", key), Signer("otaudit.example/globex", key)
    assert acme.public_key == globex.public_key and acme.id != globex.id
    note = sign_note("otaudit.example/acme\n0\n47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=\n", acme)
    assert open_note(note, [acme.verifier()]).verified
    with pytest.raises(NoteError, match="not signed by a trusted key"):
        open_note(note, [globex.verifier()])


# --- malformed notes ----------------------------------------------------------------------

_LINE = SPEC_NOTE.split("\n\n")[1]


@pytest.mark.parametrize(
    ("note", "message"),
    [
        ("This is an example message.\n" + _LINE, "no blank line"),
        (SPEC_TEXT + "\n", "no signature lines"),
        (SPEC_NOTE.removesuffix("\n"), "does not end in a newline"),
        (SPEC_TEXT + "\n" + _LINE.replace("— ", "- "), "does not start with an em dash"),
        (SPEC_TEXT + "\n" + _LINE.replace("— ", "—"), "does not start with an em dash"),
        (SPEC_TEXT + "\n" + "— example.com/foo\n", "not '— <key name> <base64 signature>'"),
        (SPEC_TEXT + "\n" + "— example.com/foo \n", "not '— <key name> <base64 signature>'"),
        (SPEC_TEXT + "\n" + _LINE.replace("example.com/foo ", "example.com/foo  "), "base64"),
        (SPEC_TEXT + "\n" + _LINE.replace("=\n", "\n"), "base64"),
        (SPEC_TEXT + "\n" + _LINE.replace("=\n", "==\n"), "base64"),
        (SPEC_TEXT + "\n" + _LINE.replace("example.com/foo", "exa+mple.com"), "contains '\\+'"),
        (SPEC_TEXT + "\n" + "— example.com/foo AAAAAA==\n", "must hold a 4-byte key ID and a signature"),
        (SPEC_TEXT + "\n" + _LINE.replace("aQM=", "aQN="), "not canonical"),  # nonzero padding bits
        (SPEC_TEXT + "\n" + _LINE + "\n" + _LINE, "does not verify"),  # the last blank line ends the text
        ("This is an\texample message.\n\n" + _LINE, "control character '\\\\t'"),
        ("This is an example message.\r\n\n" + _LINE, "control character '\\\\r'"),
        (SPEC_TEXT + "\n" + _LINE * (MAX_SIGNATURES + 1), "at most 100"),
    ],
)
def test_malformed_notes_are_rejected(note: str, message: str) -> None:
    with pytest.raises(NoteError, match=message):
        open_note(note, [parse_verifier_key(SPEC_VKEY)])


def test_a_note_that_is_not_utf8_is_rejected() -> None:
    with pytest.raises(NoteError, match="not valid UTF-8"):
        open_note(b"caf\xe9\n\n" + _LINE.encode(), [parse_verifier_key(SPEC_VKEY)])
    with pytest.raises(NoteError, match="lone surrogate"):
        signatures_of("caf\udce9\n\n" + _LINE)


def test_sixteen_signatures_are_accepted() -> None:
    signers = [fixed_signer(f"witness{i}.example", seed=i) for i in range(16)]
    note = sign_note("hello\n", *signers)
    assert len(open_note(note, [s.verifier() for s in signers]).verified) == 16


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "empty"),
        ("no newline", "does not end in a newline"),
        ("tab\there\n", "control character"),
        ("nul\x00\n", "control character"),
        ("lone \ud800\n", "lone surrogate"),
    ],
)
def test_sign_note_refuses_text_it_cannot_sign(text: str, message: str) -> None:
    with pytest.raises(NoteError, match=message):
        sign_note(text, fixed_signer())


def test_sign_note_needs_a_signer() -> None:
    with pytest.raises(NoteError, match="at least one signer"):
        sign_note("hello\n")


# --- keys ---------------------------------------------------------------------------------


def test_vkey_and_skey_round_trip() -> None:
    for _ in range(20):  # random keys: some have '+' or '/' in their base64
        signer = generate_signer("otaudit.example/acme")
        again = parse_signer_key(signer.skey())
        assert (again.name, again.id, again.public_key) == (signer.name, signer.id, signer.public_key)
        assert parse_verifier_key(signer.verifier().vkey()) == signer.verifier()
        vkey = signer.verifier().vkey()
        assert vkey.startswith(f"otaudit.example/acme+{signer.id.hex()}+A")
        assert parse_verifier_key(" " + vkey + "\n") == signer.verifier()


@pytest.mark.parametrize(
    ("vkey", "message"),
    [
        ("example.com/foo+530d903a", "three '\\+'-separated parts"),
        ("example.com/foo", "three"),
        ("example.com/foo+530d903b+AekyeRrm56hApGFkyQR4ZCbV54Id2LKaANYcrnKv3U2k", "does not match"),
        ("example.com/bar+530d903a+AekyeRrm56hApGFkyQR4ZCbV54Id2LKaANYcrnKv3U2k", "does not match"),
        ("example.com/foo+530D903A+AekyeRrm56hApGFkyQR4ZCbV54Id2LKaANYcrnKv3U2k", "8 lowercase hex"),
        ("example.com/foo+530d90+AekyeRrm56hApGFkyQR4ZCbV54Id2LKaANYcrnKv3U2k", "8 lowercase hex"),
        ("example.com/foo+530d903a+AkyeRrm56hApGFkyQR4ZCbV54Id2LKaANYcrnKv3U2k", "base64"),
        ("example.com/foo+530d903a+AukyeRrm56hApGFkyQR4ZCbV54Id2LKaANYcrnKv3U2k", "signature type 0x02"),
        ("example.com/foo+530d903a+AekyeRrm56hApGFkyQR4ZCbV54Id2LKaANYcrnKv", "has 30 bytes"),
        ("example com+530d903a+AekyeRrm56hApGFkyQR4ZCbV54Id2LKaANYcrnKv3U2k", "whitespace"),
        ("+530d903a+AekyeRrm56hApGFkyQR4ZCbV54Id2LKaANYcrnKv3U2k", "empty"),
    ],
)
def test_bad_verifier_keys_are_rejected(vkey: str, message: str) -> None:
    with pytest.raises(NoteError, match=message):
        parse_verifier_key(vkey)


@pytest.mark.parametrize(
    ("skey", "message"),
    [
        (GO_VKEY, "starts with 'PRIVATE\\+KEY\\+'"),
        (GO_SKEY.replace("c74f20a3", "c74f20a4"), "does not match"),
        (GO_SKEY.replace("PeterNeumann", "PaulNeumann"), "does not match"),
        ("PRIVATE+KEY+PeterNeumann+c74f20a3", "PRIVATE\\+KEY\\+name"),
        (GO_SKEY.replace("+AYEK", "+AoEK"), "signature type"),
    ],
)
def test_bad_signer_keys_are_rejected(skey: str, message: str) -> None:
    with pytest.raises(NoteError, match=message):
        parse_signer_key(skey)


@pytest.mark.parametrize(
    "name", ["", "a b", "a+b", "tab\there", "nbsp\u00a0", "em\u2003space", "line\u2028sep", "nl\n", "del\x7f"]
)
def test_bad_key_names_are_rejected(name: str) -> None:
    with pytest.raises(NoteError):
        check_key_name(name)
    with pytest.raises(NoteError):
        Signer(name, Ed25519PrivateKey.from_private_bytes(bytes(32)))


def test_good_key_names() -> None:
    for name in ["example.com/log", "otaudit.example/acme%20corp", "ünïcode.example/ü", "PeterNeumann"]:
        check_key_name(name)


def test_verifier_checks_its_public_key() -> None:
    with pytest.raises(NoteError, match="has 31 bytes"):
        Verifier("example.com/foo", bytes(31))
    verifier = parse_verifier_key(SPEC_VKEY)
    assert not verifier.verify(b"This is an example message.\n", bytes(63))
    assert not verifier.verify(b"This is an example message.\n", bytes(64))


def test_load_signer_seed_reads_a_seed_or_a_signer_key() -> None:
    key = Ed25519PrivateKey.from_private_bytes(bytes(range(32)))
    text = seed_text(key)
    assert base64.b64decode(text) == bytes(range(32))
    assert load_signer_seed(text + "\n").private_bytes_raw() == bytes(range(32))
    signer = Signer("ignored.example", key)
    assert load_signer_seed(signer.skey()).private_bytes_raw() == bytes(range(32))
    assert load_signer_seed(GO_SKEY).public_key().public_bytes_raw() == parse_verifier_key(GO_VKEY).public_key


@pytest.mark.parametrize(("text", "message"), [("AAAA", "3 bytes"), ("not base64!", "base64"), ("", "0 bytes")])
def test_load_signer_seed_rejects_other_text(text: str, message: str) -> None:
    with pytest.raises(NoteError, match=message):
        load_signer_seed(text)
