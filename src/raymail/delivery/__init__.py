"""Delivery: MX resolution and SMTP delivery servers."""
