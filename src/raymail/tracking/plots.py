"""Figures of a campaign summary (matplotlib, an optional extra: ``pip install raymail[plots]``)."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Any

from raymail.errors import TrackingError


def _pyplot() -> Any:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise TrackingError(
            "plots need matplotlib: pip install 'raymail[plots]' (or pip install matplotlib)"
        ) from None
    return plt


def plot_summary(summary: dict[str, Any], path: Path, *, top_domains: int = 15) -> Path:
    """Opens and clicks by hour, and the unique open rate of the busiest domains, as a PNG."""
    plt = _pyplot()
    fig, (by_hour, by_domain) = plt.subplots(1, 2, figsize=(12, 4.5), dpi=100)
    hours = [datetime.fromisoformat(h["hour"]) for h in summary["by_hour"]]
    for measure in ("opens", "clicks"):
        by_hour.plot(hours, [h[measure] for h in summary["by_hour"]], marker="o", label=measure)
    by_hour.set_title("opens and clicks per hour (UTC)")
    by_hour.legend()
    fig.autofmt_xdate()
    domains = summary["by_domain"][:top_domains]
    names = [d["domain"] for d in domains][::-1]
    rates = [(d["open_rate"] or 0.0) for d in domains][::-1]
    by_domain.barh(names, rates)
    by_domain.set_xlabel("unique open rate")
    by_domain.set_title(f"top {len(domains)} domains by volume")
    bots = "with" if summary["include_bots"] else "without"
    fig.suptitle(f"campaign {summary['campaign']} ({bots} bot and proxy hits)")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png")
    plt.close(fig)
    return path
