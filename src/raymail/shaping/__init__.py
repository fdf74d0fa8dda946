"""Adaptive traffic shaping per MX host: limits learned from replies (issue 13 part 3).

``rules`` (built-in YAML data, overridable in the spec's ``shaping`` key) name the replies
that mean "slow down" and what to do; ``state`` holds one MX host's limits and moves them
(a rule's action, else additive increase / multiplicative decrease); ``limiter`` gives
a delivery server's connection pool its per-MX permits from that state.
"""

from raymail.shaping.rules import ShapingRule, ShapingSettings, match_rule, rules_of
from raymail.shaping.state import HostState

__all__ = ["HostState", "ShapingRule", "ShapingSettings", "match_rule", "rules_of"]
