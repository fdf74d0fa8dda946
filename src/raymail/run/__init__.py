"""A run's durable state: the run directory, the ledger, recovery, the report, export.

Everything a killed run needs to resume, and everything ``raymail report`` and ``status``
read back, lives here; the object store is a cache, these Parquet and JSON files are the truth.
"""
