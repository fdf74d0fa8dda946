"""An embedded SMTP sink: accepts mail for any domain on loopback, injects faults, captures.

Used by ``raymail demo``, the test suite (fault injection) and benchmarks. Run it in this
process (:func:`run_sink`), in a child process (:class:`SinkProcess`), or in the foreground
(``raymail sink`` / ``python -m raymail.sink``).
"""

from __future__ import annotations

from raymail.errors import SinkConfigError, SinkError
from raymail.sink.capture import (
    CapturedMessage,
    capture_files,
    find_message_id,
    iter_capture,
    raw_message,
    read_capture,
)
from raymail.sink.config import Behaviour, Rule, SinkConfig, load_config, parse_config
from raymail.sink.faults import Pick, RuleBook
from raymail.sink.process import SinkProcess
from raymail.sink.runner import RunningSink, run_sink, serve
from raymail.sink.server import SinkServer
from raymail.sink.stats import SinkStats
from raymail.sink.topology import RandomTopology, Topology, load_topology, random_topology

__all__ = [
    "Behaviour",
    "CapturedMessage",
    "Pick",
    "RandomTopology",
    "Rule",
    "RuleBook",
    "RunningSink",
    "SinkConfig",
    "SinkConfigError",
    "SinkError",
    "SinkProcess",
    "SinkServer",
    "SinkStats",
    "Topology",
    "capture_files",
    "find_message_id",
    "iter_capture",
    "load_config",
    "load_topology",
    "parse_config",
    "random_topology",
    "raw_message",
    "read_capture",
    "run_sink",
    "serve",
]
