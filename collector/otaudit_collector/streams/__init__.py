"""Streams: each tenant's trail delivered, as it grows, to where its security team works.

``transport.py`` is the contract between the delivery loop (``runner.py``, which owns the
cursor, the lease and the retries) and each destination (``webhook.py``, ``files.py``, ...),
which only sends a batch and says whether it arrived.
"""
