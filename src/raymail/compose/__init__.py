"""Composition: a recipient row and the campaign's templates become the bytes sent.

``message`` merges the templates, ``mime`` builds the MIME structure once per campaign,
``verp`` signs the return-path and unsubscribe tokens that tie replies back to a recipient.
"""
