"""otaudit's transparency-log formats, and the offline verifier built on them.

Pure and small, the standard library plus ``cryptography`` (Ed25519): the collector signs
and serves with these modules, and an auditor checks with the same ones, without the
collector (``otaudit-verify BUNDLE``).

- ``merkle``: RFC 6962 / RFC 9162 hashing, inclusion, consistency and range proofs
- ``tiles``: the C2SP tlog-tiles layout (tile coordinates, paths, appending)
- ``note``: C2SP signed-note with Ed25519, and the key encodings
- ``checkpoint``: C2SP tlog-checkpoint, and C2SP tlog-proof
- ``entry``: the leaf entry of an event (RFC 8785 JSON, salted commitments)
"""

__version__ = "0.1.0"
