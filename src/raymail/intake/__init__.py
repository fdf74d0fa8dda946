"""Intake: the recipient list read, checked and normalised into the run directory.

``address`` checks one address, ``recipients`` the columns of a table, ``stream`` reads a
list of any size batch by batch (bad rows to ``rejects.parquet``), ``staging`` turns a path
or ``s3://`` URL into a local copy the stream and any resume read.
"""
