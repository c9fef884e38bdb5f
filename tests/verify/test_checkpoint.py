"""C2SP checkpoints, tenant origins and C2SP tlog proofs: the specifications' examples, round trips, rejections."""

from __future__ import annotations

import base64
import hashlib

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given
from hypothesis import strategies as st

from otaudit_verify.checkpoint import (
    MAX_SIZE,
    Checkpoint,
    CheckpointError,
    TlogProof,
    origin_for,
    parse_checkpoint,
    parse_tlog_proof,
    tenant_of,
)
from otaudit_verify.note import Signer, check_key_name, open_note, parse_verifier_key, sign_note

# c2sp.org/tlog-checkpoint
SPEC_CHECKPOINT_TEXT = "example.com/behind-the-sofa\n20852163\nCsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jxq2I=\n"
SPEC_CHECKPOINT_NOTE = (
    SPEC_CHECKPOINT_TEXT + "\n"
    "— example.com/behind-the-sofa Az3grlgtzPICa5OS8npVmf1Myq/5IZniMp+ZJurmRDeOoRDe4URYN7u5/Zhcyv2q1gGzGku9nTo+zyWE+xeMcTOAYQ8=\n"
)

# c2sp.org/tlog-proof: its signatures are shortened with "[...]".
SPEC_PROOF = """c2sp.org/tlog-proof@v1
extra YWdlLXYxLjIuMS1kYXJ3aW4tYXJtNjQudGFyLmd6kYXJ3aW4tYXJ
index 73894
gSKyXoYZUgZ6jduWYrkDOARinOMGJveXjgMkBTcdPlQ=
B95lDa8R83lS8n0eG+o0buTxRKQTYFi//1U8anccXmA=
EKNzoDWG8LGC0Yp9o+sv3qllpMP9uHQ9B20KNL+Q1zs=
RoopEkOdqkYqMB4MJXrbt/hMjOxsVn0IrWjpz1ZMMes=
AHCioX9nLjsrse6YhjRRmk1WUEirVOLLRoOQ6vfO5vk=

example.com/fancylog
109482
sFodV/vSp5O8n9a8QpW6PRY97tfOSW5bsc2Xl/EQi08=

— example.com/fancylog hI2DJw[...]1roloI=
— witness1.example mJirIklj[...]qY9v2B/5bg==
— witness2.example TnKKVHLX[...]xwYwrSjgow==
— witness3.example S4X82uH5[...]3oEcROGLFQ==
"""

# The example in otaudit_verify.checkpoint's docstring.
DOC_VKEY = "otaudit.example/acme+06ffdeba+ATtqJ7zOtqQtYqOo0CpvDXNlMhV3HeJDpjrASKGLWdop"
DOC_PROOF = """c2sp.org/tlog-proof@v1
index 1
iipcm3aIJ95alVLDigRMZpWcaPbS8htSYK9U0vh9uCc=

otaudit.example/acme
2
JCMzOarc7fKH0mJBPwPAKOuNs5ft0yooeAkRUbmb8g8=

— otaudit.example/acme Bv/eusSeInB393SG5EVZG1cWmk0x52TloxfYZ6Su1HAlGvI31LQgKAdYD4mMkFt4TmGPN0ft9mC5WykW5N25IKdefQc=
"""

ROOT = bytes(range(32))


def signer(name: str = "otaudit.example/acme") -> Signer:
    return Signer(name, Ed25519PrivateKey.from_private_bytes(bytes(32)))


# --- checkpoints --------------------------------------------------------------------------


def test_spec_checkpoint_parses() -> None:
    checkpoint = parse_checkpoint(SPEC_CHECKPOINT_TEXT)
    assert checkpoint.origin == "example.com/behind-the-sofa"
    assert checkpoint.size == 20852163
    assert checkpoint.root == base64.b64decode("CsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jxq2I=")
    assert checkpoint.extensions == ()
    assert checkpoint.text() == SPEC_CHECKPOINT_TEXT


def test_checkpoint_round_trips_through_a_signed_note() -> None:
    checkpoint = Checkpoint("otaudit.example/acme", 0, hashlib.sha256(b"").digest())
    assert checkpoint.text() == "otaudit.example/acme\n0\n47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=\n"
    note = sign_note(checkpoint.text(), signer())
    assert parse_checkpoint(open_note(note, [signer().verifier()]).text) == checkpoint


def test_extension_lines_round_trip() -> None:
    checkpoint = Checkpoint("example.com/log", 12, ROOT, ("ext one", "— looks like a signature"))
    assert checkpoint.text().endswith("\next one\n— looks like a signature\n")
    assert parse_checkpoint(checkpoint.text()) == checkpoint


@given(
    origin=st.text(st.characters(exclude_categories=["Cs", "Cc"]), min_size=1),
    size=st.integers(0, MAX_SIZE),
    root=st.binary(min_size=32, max_size=32),
    extensions=st.lists(st.text(st.characters(exclude_categories=["Cs", "Cc"]), min_size=1), max_size=3),
)
def test_any_checkpoint_round_trips(origin: str, size: int, root: bytes, extensions: list[str]) -> None:
    checkpoint = Checkpoint(origin, size, root, tuple(extensions))
    assert parse_checkpoint(checkpoint.text()) == checkpoint


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("example.com/log\n1\n" + base64.b64encode(ROOT).decode(), "does not end in a newline"),
        ("example.com/log\n1\n", "has 2 lines"),
        ("\n1\n" + base64.b64encode(ROOT).decode() + "\n", "origin \\(line 1\\) is empty"),
        ("example.com/log\n01\n" + base64.b64encode(ROOT).decode() + "\n", "without leading zeros"),
        ("example.com/log\n-1\n" + base64.b64encode(ROOT).decode() + "\n", "not a decimal"),
        ("example.com/log\n+1\n" + base64.b64encode(ROOT).decode() + "\n", "not a decimal"),
        ("example.com/log\n1_000\n" + base64.b64encode(ROOT).decode() + "\n", "not a decimal"),
        ("example.com/log\n١\n" + base64.b64encode(ROOT).decode() + "\n", "not a decimal"),  # Arabic-Indic one
        ("example.com/log\n 1\n" + base64.b64encode(ROOT).decode() + "\n", "not a decimal"),
        ("example.com/log\n\n" + base64.b64encode(ROOT).decode() + "\n", "not a decimal"),
        ("example.com/log\n9223372036854775808\n" + base64.b64encode(ROOT).decode() + "\n", "larger than"),
        ("example.com/log\n1\n" + base64.b64encode(ROOT[:31]).decode() + "\n", "31 bytes"),
        ("example.com/log\n1\n" + base64.b64encode(ROOT + b"\0").decode() + "\n", "33 bytes"),
        ("example.com/log\n1\n" + base64.b64encode(ROOT).decode().rstrip("=") + "\n", "not valid base64"),
        ("example.com/log\n1\nAAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh9=\n", "not canonical"),
        ("example.com/log\n1\n" + base64.urlsafe_b64encode(b"\xff" * 32).decode() + "\n", "not valid base64"),
        ("example.com/log\n1\n" + base64.b64encode(ROOT).decode() + "\n\n", "line 4 is empty"),
        ("example.com/log\n1\n" + base64.b64encode(ROOT).decode() + "\next\n\n", "line 5 is empty"),
        (SPEC_CHECKPOINT_NOTE, "line 4 is empty"),  # the whole note, not its text
        ("example.com/log\n1\n" + base64.b64encode(ROOT).decode() + "\nbad\tline\n", "control character"),
    ],
)
def test_malformed_checkpoints_are_rejected(text: str, message: str) -> None:
    with pytest.raises(CheckpointError, match=message):
        parse_checkpoint(text)


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        (("", 1, ROOT), "origin is empty"),
        (("a\nb", 1, ROOT), "newline"),
        (("example.com/log", -1, ROOT), "not an integer from 0"),
        (("example.com/log", MAX_SIZE + 1, ROOT), "not an integer from 0"),
        (("example.com/log", True, ROOT), "not an integer from 0"),
        (("example.com/log", 1, ROOT[:4]), "4 bytes"),
        (("example.com/log", 1, ROOT, ("",)), "must be non-empty"),
        (("example.com/log", 1, ROOT, ("a\nb",)), "newline"),
    ],
)
def test_checkpoints_that_cannot_be_written_are_refused(fields: tuple[object, ...], message: str) -> None:
    with pytest.raises(CheckpointError, match=message):
        Checkpoint(*fields)  # type: ignore[arg-type]


# --- origins ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("tenant", "origin"),
    [
        ("acme", "otaudit.example/acme"),
        ("Acme-Corp_1.x~y", "otaudit.example/Acme-Corp_1.x~y"),
        ("a+b", "otaudit.example/a%2Bb"),
        ("Ann's team", "otaudit.example/Ann%27s%20team"),
        ("a/b", "otaudit.example/a%2Fb"),
        ("a+b/ç", "otaudit.example/a%2Bb%2F%C3%A7"),
        ("100%", "otaudit.example/100%25"),
        ("東京", "otaudit.example/%E6%9D%B1%E4%BA%AC"),
        ("🎉", "otaudit.example/%F0%9F%8E%89"),
        ("tab\t", "otaudit.example/tab%09"),
    ],
)
def test_origin_for_and_tenant_of(tenant: str, origin: str) -> None:
    assert origin_for("otaudit.example", tenant) == origin
    assert tenant_of(origin, "otaudit.example") == tenant
    check_key_name(origin)  # every origin is a valid key name


@given(tenant=st.text(st.characters(exclude_categories=["Cs"]), min_size=1))
def test_any_tenant_round_trips(tenant: str) -> None:
    origin = origin_for("audit.example.com/eu", tenant)
    check_key_name(origin)
    assert tenant_of(origin, "audit.example.com/eu") == tenant


@pytest.mark.parametrize(
    ("deployment", "message"),
    [
        ("", "empty"),
        ("otaudit.example/", "ends in '/'"),
        ("ot+audit.example", "contains '\\+'"),
        ("otaudit example", "whitespace"),
        ("otaudit.example\n", "whitespace"),
        ("otaudit\u00a0example", "whitespace"),
    ],
)
def test_bad_deployment_names_are_refused(deployment: str, message: str) -> None:
    with pytest.raises(CheckpointError, match=message):
        origin_for(deployment, "acme")
    with pytest.raises(CheckpointError, match=message):
        tenant_of(f"{deployment}/acme", deployment)


def test_origin_for_refuses_an_empty_or_invalid_tenant() -> None:
    with pytest.raises(CheckpointError, match="empty"):
        origin_for("otaudit.example", "")
    with pytest.raises(CheckpointError, match="lone surrogate"):
        origin_for("otaudit.example", "\udc80")


@pytest.mark.parametrize(
    ("origin", "message"),
    [
        ("other.example/acme", "not a tenant log of deployment"),
        ("otaudit.example", "not a tenant log of deployment"),
        ("otaudit.exampleX/acme", "not a tenant log of deployment"),
        ("otaudit.example/", "not a percent-encoded tenant id"),
        ("otaudit.example/a b", "not a percent-encoded tenant id"),
        ("otaudit.example/a+b", "not a percent-encoded tenant id"),
        ("otaudit.example/a/b", "not a percent-encoded tenant id"),
        ("otaudit.example/a%2", "not a percent-encoded tenant id"),
        ("otaudit.example/a%2b", "not a percent-encoded tenant id"),  # lower-case hex
        ("otaudit.example/ç", "not a percent-encoded tenant id"),
        ("otaudit.example/%41", "not encoded canonically"),  # 'A' needs no escape
        ("otaudit.example/%C3", "not UTF-8"),
        ("otaudit.example/%ED%A0%80", "not UTF-8"),  # a surrogate
    ],
)
def test_tenant_of_rejects_what_origin_for_never_writes(origin: str, message: str) -> None:
    with pytest.raises(CheckpointError, match=message):
        tenant_of(origin, "otaudit.example")


# --- tlog proofs --------------------------------------------------------------------------


def test_the_docstring_proof_parses_and_proves_world() -> None:
    proof = parse_tlog_proof(DOC_PROOF)
    assert proof.index == 1 and proof.extra is None
    assert proof.proof == (hashlib.sha256(b"\x00hello").digest(),)
    opened = open_note(proof.checkpoint, [parse_verifier_key(DOC_VKEY)])
    checkpoint = parse_checkpoint(opened.text)
    assert (checkpoint.origin, checkpoint.size) == ("otaudit.example/acme", 2)
    # RFC 6962: index 1 of 2 is a right child; its sibling is the proof's only hash.
    assert checkpoint.root == hashlib.sha256(b"\x01" + proof.proof[0] + hashlib.sha256(b"\x00world").digest()).digest()
    assert proof.text() == DOC_PROOF
    assert signer().verifier().vkey() == DOC_VKEY


def _complete_signatures(text: str) -> str:
    """The specification's example with its shortened signatures replaced by whole ones."""
    head, _, _ = text.partition("— example.com/fancylog")
    body = head.split("\n\n", 1)[1].removesuffix("\n")
    note = sign_note(body, signer("example.com/fancylog"), signer("witness1.example"), signer("witness2.example"))
    return head.split("\n\n", 1)[0] + "\n\n" + note


def test_spec_proof_shape() -> None:
    with pytest.raises(CheckpointError, match=r"not a signed note.*base64"):
        parse_tlog_proof(SPEC_PROOF)  # "[...]" is not base64
    text = _complete_signatures(SPEC_PROOF)
    proof = parse_tlog_proof(text)
    assert proof.index == 73894
    assert proof.extra is not None and proof.extra.startswith(b"age-v1.2.1-darwin-arm64.tar.gz")
    assert len(proof.proof) == 5
    assert proof.proof[0] == base64.b64decode("gSKyXoYZUgZ6jduWYrkDOARinOMGJveXjgMkBTcdPlQ=")
    assert proof.checkpoint.startswith("example.com/fancylog\n109482\nsFodV/vSp5O8n9a8QpW6PRY97tfOSW5bsc2Xl/EQi08=\n\n— ")
    assert proof.text() == text
    opened = open_note(proof.checkpoint, [signer("example.com/fancylog").verifier()])
    assert parse_checkpoint(opened.text).size == 109482
    assert len(opened.unverified) == 2


@given(
    index=st.integers(0, MAX_SIZE),
    proof=st.lists(st.binary(min_size=32, max_size=32), max_size=63),
    extra=st.none() | st.binary(min_size=1, max_size=100),
)
def test_any_tlog_proof_round_trips(index: int, proof: list[bytes], extra: bytes | None) -> None:
    checkpoint = sign_note(Checkpoint("otaudit.example/acme", 5, ROOT).text(), signer())
    made = TlogProof(index, tuple(proof), checkpoint, extra)
    assert parse_tlog_proof(made.text()) == made


def _proof(head: str, hashes: list[str] | None = None) -> str:
    lines = [base64.b64encode(ROOT).decode()] if hashes is None else hashes
    note = sign_note(Checkpoint("otaudit.example/acme", 5, ROOT).text(), signer())
    return head + "".join(line + "\n" for line in lines) + "\n" + note


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (_proof("c2sp.org/tlog-proof@v2\nindex 1\n"), "expected 'c2sp.org/tlog-proof@v1'"),
        (_proof("index 1\n"), "expected 'c2sp.org/tlog-proof@v1'"),
        (_proof("c2sp.org/tlog-proof@v1\n"), "no 'index N' line"),
        (_proof("c2sp.org/tlog-proof@v1\nindex 01\n"), "without leading zeros"),
        (_proof("c2sp.org/tlog-proof@v1\nindex -1\n"), "not a decimal"),
        (_proof("c2sp.org/tlog-proof@v1\nindex  1\n"), "not a decimal"),
        (_proof("c2sp.org/tlog-proof@v1\nIndex 1\n"), "no 'index N' line"),
        (_proof("c2sp.org/tlog-proof@v1\nindex 1\nextra AAAA\n", []), "tlog proof hash 0"),
        (_proof("c2sp.org/tlog-proof@v1\nextra \nindex 1\n"), "extra line is empty"),
        (_proof("c2sp.org/tlog-proof@v1\nextra AB==\nindex 1\n"), "extra line is not canonical"),
        (_proof("c2sp.org/tlog-proof@v1\nextra !!\nindex 1\n"), "extra line is not valid base64"),
        (_proof("c2sp.org/tlog-proof@v1\nindex 1\n", ["AAAA"]), "3 bytes"),
        (_proof("c2sp.org/tlog-proof@v1\nindex 1\n", [base64.b64encode(ROOT).decode() + " "]), "not valid base64"),
        (_proof("c2sp.org/tlog-proof@v1\nindex 1\n", [base64.b64encode(ROOT).decode()] * 64), "at most 63"),
        ("c2sp.org/tlog-proof@v1\nindex 1\n", "no empty line"),
        ("c2sp.org/tlog-proof@v1\nindex 1\n\n", "not a signed note"),
        ("c2sp.org/tlog-proof@v1\nindex 1\n\nexample.com/log\n1\n\n— example.com/log AAAAAAA=\n", "has 2 lines"),
    ],
)
def test_malformed_tlog_proofs_are_rejected(text: str, message: str) -> None:
    with pytest.raises(CheckpointError, match=message):
        parse_tlog_proof(text)


def test_tlog_proofs_that_cannot_be_written_are_refused() -> None:
    note = sign_note(Checkpoint("otaudit.example/acme", 5, ROOT).text(), signer())
    with pytest.raises(CheckpointError, match="index -1"):
        TlogProof(-1, (), note)
    with pytest.raises(CheckpointError, match="hash 0 has 31 bytes"):
        TlogProof(0, (ROOT[:31],), note)
    with pytest.raises(CheckpointError, match="pass None"):
        TlogProof(0, (), note, b"")
    with pytest.raises(CheckpointError, match="not a signed note"):
        TlogProof(0, (), Checkpoint("otaudit.example/acme", 5, ROOT).text())
