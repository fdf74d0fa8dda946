"""Intake: the recipient list read, checked and normalised into the run directory.

``recipients`` is the one loader: it reads a list of any size batch by batch through
``readers`` (CSV in any encoding, Parquet), checks each batch with ``checks`` (vectorised;
``address`` for one address, ``alternates`` for the alternates column) and sets bad rows
aside for ``rejects.parquet``; ``staging`` turns a path or ``s3://`` URL into a local copy
the loader and any resume read.
"""
