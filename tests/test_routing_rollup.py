"""The preferred-server map over 1,000 domains: top N by volume, the rest rolled up by MX
host (or provider), so the figure stays readable (it was one row per domain: 30,296 px)."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import polars as pl
import pytest

from raymail.errors import RoutingError
from raymail.routing import RoutingTable, preferred_map
from raymail.routing.model import SUMS, Evidence, PortionEvidence
from raymail.routing.rollup import domain_labels

DAY = 86400.0
SERVERS = ("10.0.0.1", "10.0.0.2")


def _table(path: Path, domains: int) -> dict[str, float]:
    """``domains`` domains on 40 MX hosts of 8 providers; domain i has 1000 - i recipients."""
    evidence = Evidence()
    volume: dict[str, float] = {}
    now = datetime.now(UTC)
    for i in range(domains):
        domain, mx = f"d{i:04d}.test", f"mx{i % 40}.provider{i % 8}.test"
        n = float(1000 - i)
        volume[domain] = n
        for server, per in zip(SERVERS, (0.02, 0.2 if i % 2 else 0.01), strict=True):
            sums = dict.fromkeys(SUMS, 0.0)
            sums.update(transactions=n, recipients=n / 2, busy_s=n * per, transaction_s=n * per,
                        accepted=n / 2)  # fmt: skip
            evidence.add(PortionEvidence({(server, domain, mx): list(sums.values())}, [], domain))
    RoutingTable(path).merge(evidence.frame(now), None, 7 * DAY, now)
    return volume


def test_top_domains_and_mx_groups_bound_the_map(tmp_path: Path) -> None:
    volume = _table(tmp_path / "routing", 1000)
    full = preferred_map(tmp_path / "routing")
    assert full["domain"].n_unique() == 1000
    top = preferred_map(tmp_path / "routing", top=10)
    labels = top["domain"].unique(maintain_order=True).to_list()
    assert labels[:10] == [f"d{i:04d}.test" for i in range(10)]  # the busiest, busiest first
    assert all(label.startswith("other") for label in labels[10:])
    assert len(labels) == 10 + 10 + 1  # 10 MX groups kept apart, the rest one 'other' row
    assert top.height == len(labels) * len(SERVERS)
    assert top["domains"].sum() == 1000 * len(SERVERS)
    per_label = top.group_by("domain").agg(pl.col("recipients").max())
    # each server carried half of every domain's recipients; nothing lost in the roll-up
    assert per_label["recipients"].sum() == pytest.approx(sum(volume.values()) / 2, rel=1e-3)
    assert set(top["mark"].drop_nulls()) <= {"preferred", "acceptable", "unacceptable"}
    by_provider = preferred_map(tmp_path / "routing", top=5, by="provider")
    groups = [d for d in by_provider["domain"].unique().to_list() if d.startswith("other @")]
    assert groups and all(g.removeprefix("other @ ").startswith("provider") for g in groups)
    assert len(groups) == 5


def test_labels_reject_bad_arguments() -> None:
    frame = pl.DataFrame({"domain": ["a.test"], "mx_host": [None], "volume": [1]})
    assert domain_labels(frame, 0, max_groups=1)["label"].to_list() == ["other @ unknown MX"]
    assert domain_labels(frame, 0)["label"].to_list() == ["other"]
    assert domain_labels(frame, 1)["label"].to_list() == ["a.test"]
    with pytest.raises(RoutingError, match="must be >= 0"):
        domain_labels(frame, -1)
    with pytest.raises(RoutingError, match="missing columns"):
        domain_labels(frame.drop("mx_host"), 3)
