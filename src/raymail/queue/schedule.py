"""Putting a campaign in the queue: once at a time, or once per recipient time zone."""

from __future__ import annotations

from pathlib import Path

from raymail.queue.store import CampaignQueue, Entry, default_runs_root, new_group_id
from raymail.queue.when import due_at
from raymail.queue.zones import split_by_zone
from raymail.spec import CampaignSpec


def schedule_campaign(
    queue: CampaignQueue,
    spec: CampaignSpec,
    *,
    at: str | None = None,
    tz: str = "UTC",
    priority: int = 100,
    spec_path: str | None = None,
    run_dir: str | Path | None = None,
    per_recipient_zone: bool = False,
) -> list[Entry]:
    """Queue ``spec`` at ``at`` (None: now). With ``per_recipient_zone``, ``at`` is a
    wall-clock time read in each recipient's ``timezone`` (default ``tz``), and the campaign
    becomes one entry per zone."""
    if not per_recipient_zone:
        when = due_at(at, tz)
        return [
            queue.schedule(
                spec,
                due_at=when,
                priority=priority,
                spec_path=spec_path,
                run_dir=run_dir,
                timezone=None if at is None else tz,
            )
        ]
    group = new_group_id(spec.campaign)
    root = Path(run_dir) if run_dir else default_runs_root() / group
    parts, _rejected = split_by_zone(spec.recipients, at or "00:00", tz, root / "lists")
    entries = []
    for number, part in enumerate(parts, start=1):
        part_spec = spec.model_copy(update={"recipients": str(part.path)})
        entries.append(
            queue.schedule(
                part_spec,
                due_at=part.due_at,
                priority=priority,
                spec_path=spec_path,
                run_dir=root / f"{number:03d}-{part.path.stem}",
                timezone=part.zone,
                group=group,
                part=number,
            )
        )
    return entries
