"""Known campaigns: which return addresses are ours, and whom a token stands for.

A VERP token carries a keyed hash of the campaign and of the recipient, not the addresses
(see :mod:`raymail.compose.verp`). The registry knows each campaign's id, secret and domains (from
campaign specs, run directories, or folders of run directories that it rescans when a token
it cannot place arrives, at most every few seconds), and turns a recipient tag back into
the address through the run's ``recipients.parquet``: tags are computed once per run and
kept as a sorted array (16 bytes per recipient), so a lookup is a binary search.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import numpy as np
import numpy.typing as npt
import pyarrow.parquet as pq

from raymail.compose.message import BOUNCE_LOCAL
from raymail.compose.verp import TokenKind, campaign_tag, decode_token, recipient_tag
from raymail.errors import RaymailError
from raymail.run.rundir import RECIPIENTS, SPEC, RunDir
from raymail.spec import CampaignSpec

log = logging.getLogger(__name__)

_MESSAGE_ID_RE: Final = re.compile(r"<([0-9a-f]{16})\.([0-9a-f]{8})@[^>\s]+>", re.I)
_RESCAN_S: Final = 5.0
_PENDING_RESCAN_S: Final = 0.2  # while a run directory is being created


@dataclass(frozen=True, slots=True)
class KnownCampaign:
    """One campaign the returns server answers for."""

    campaign: str
    secret: str
    domains: frozenset[str]  # the VERP return domain and the unsubscribe mailto domain
    run_dir: Path | None = None
    unsubscribe_local: str = "unsubscribe"  # local part of the List-Unsubscribe mailto

    @classmethod
    def from_spec(cls, spec: CampaignSpec, run_dir: Path | None = None) -> KnownCampaign:
        unsubscribe = spec.unsubscribe_mailto or f"unsubscribe@{spec.bounce_domain}"
        local, _, domain = unsubscribe.lower().rpartition("@")
        domains = frozenset({spec.bounce_domain, domain})
        return cls(spec.campaign, spec.verp_secret, domains, run_dir, local)


@dataclass(frozen=True, slots=True)
class Decoded:
    """A verified token in a return address."""

    kind: TokenKind
    campaign: str
    recipient_tag: str | None


class _Tags:
    """A run's recipient tags, sorted, with the address of each."""

    def __init__(self, path: Path, secret: str) -> None:
        self.mtime = path.stat().st_mtime_ns
        emails = [str(e) for e in pq.read_table(path, columns=["email"]).column(0).to_pylist()]
        raw = [int(recipient_tag(e, secret), 16) for e in emails]
        tags: npt.NDArray[np.uint64] = np.array(raw, dtype=np.uint64)
        self.order = np.argsort(tags, kind="stable")
        self.tags = tags[self.order]
        self.emails = emails

    def find(self, tag: str) -> str | None:
        value = np.uint64(int(tag, 16))
        i = int(np.searchsorted(self.tags, value))
        if i < len(self.tags) and self.tags[i] == value:
            return self.emails[int(self.order[i])].lower()
        return None


class CampaignRegistry:
    """Campaigns by secret and tag; thread-safe (the SMTP loop and the classifier share it)."""

    def __init__(
        self,
        campaigns: Iterable[KnownCampaign] = (),
        runs: Iterable[Path] = (),
        *,
        rescan_interval_s: float = _RESCAN_S,
    ) -> None:
        self._fixed = list(campaigns)
        self._runs = [Path(p) for p in runs]
        self._rescan_s = rescan_interval_s
        self._lock = threading.RLock()
        self._scanned_at = float("-inf")
        self._stamp_seen: tuple[int | None, ...] = ()
        self._pending: list[Path] = []
        self._seen_specs: dict[Path, int] = {}
        self._campaigns: dict[str, list[KnownCampaign]] = {}
        self._by_tag: dict[tuple[str, str], str] = {}  # (secret, campaign tag) -> campaign
        self._tags: dict[Path, _Tags] = {}
        self._tags_lock = threading.Lock()
        for known in self._fixed:
            self._add(known)
        self.refresh(force=True)

    # -- what is known -----------------------------------------------------------------

    def _add(self, known: KnownCampaign) -> None:
        entries = self._campaigns.setdefault(known.campaign, [])
        if known not in entries:
            entries.append(known)
        self._by_tag[(known.secret, campaign_tag(known.campaign, known.secret))] = known.campaign

    def _stamp(self) -> tuple[int | None, ...]:
        """The roots' modification times: a new run directory changes its root's."""
        stamps: list[int | None] = []
        for root in self._runs:
            try:
                stamps.append(root.stat().st_mtime_ns)
            except OSError:
                stamps.append(None)
        return tuple(stamps)

    def refresh(self, *, force: bool = False) -> None:
        """Read run directories not seen yet.

        Cheap when nothing changed (one stat per root): a full rescan happens when a root
        changed, or the rescan interval passed (a fraction of a second while a run
        directory waits for its spec), so a campaign is known as soon as its spec exists.
        """
        with self._lock:
            now = time.monotonic()
            stamp = self._stamp()
            wait = _PENDING_RESCAN_S if self._pending else self._rescan_s
            if not force and stamp == self._stamp_seen and now - self._scanned_at < wait:
                return
            self._scanned_at, self._stamp_seen = now, stamp
            run_dirs, self._pending = _run_dirs(self._runs)
            for run_dir in run_dirs:
                spec_path = run_dir / SPEC
                try:
                    mtime = spec_path.stat().st_mtime_ns
                except OSError:
                    continue
                if self._seen_specs.get(spec_path) == mtime:
                    continue
                self._seen_specs[spec_path] = mtime
                try:
                    spec = RunDir(run_dir).spec()
                except RaymailError as exc:
                    log.warning("returns: skipping run directory %s: %s", run_dir, exc)
                    continue
                self._add(KnownCampaign.from_spec(spec, run_dir))

    @property
    def campaigns(self) -> list[str]:
        with self._lock:
            return sorted(self._campaigns)

    @property
    def domains(self) -> frozenset[str]:
        with self._lock:
            return frozenset(d for ks in self._campaigns.values() for k in ks for d in k.domains)

    def _secrets(self) -> list[str]:
        return sorted({k.secret for ks in self._campaigns.values() for k in ks})

    # -- decoding ----------------------------------------------------------------------

    def decode(self, address: str) -> Decoded | None:
        """The verified token in ``prefix+TOKEN@domain`` of a known campaign, else None."""
        local, _, domain = address.strip().strip("<>").rpartition("@")
        prefix, plus, token = local.rpartition("+")
        if not plus or not prefix:
            return None
        for attempt in range(2):  # once, and once more after a rescan for new campaigns
            found, signed = self._decode(token, domain.lower())
            if found is not None or attempt:
                break
            # Signed with a known secret: a genuine token of a campaign not read yet.
            self.refresh(force=signed)
        if found is None:
            return None
        with self._lock:
            unsubscribe = {k.unsubscribe_local for k in self._campaigns[found.campaign]}
        wanted = {BOUNCE_LOCAL} if found.kind is TokenKind.BOUNCE else unsubscribe
        return found if prefix.lower() in wanted else None

    def _decode(self, token: str, domain: str) -> tuple[Decoded | None, bool]:
        """(the decoded token, whether a known secret signed it)."""
        signed = False
        with self._lock:
            for secret in self._secrets():
                verified = decode_token(token, secret)
                if verified is None:
                    continue
                signed = True
                campaign = self._by_tag.get((secret, verified.campaign_tag))
                if campaign is None:
                    continue
                if not any(domain in k.domains for k in self._campaigns[campaign]):
                    continue
                return Decoded(verified.kind, campaign, verified.recipient_tag), True
        return None, signed

    def secrets(self) -> list[str]:
        """The known campaigns' secrets (for tokens that are not in an address)."""
        with self._lock:
            return self._secrets()

    def campaign_for(self, secret: str, tag: str) -> str | None:
        """The known campaign with this secret and campaign tag; rescans once if unknown."""
        with self._lock:
            found = self._by_tag.get((secret, tag))
        if found is None:
            self.refresh()
            with self._lock:
                found = self._by_tag.get((secret, tag))
        return found

    def known(self, campaign: str) -> list[KnownCampaign]:
        """Every entry (spec, run directory) of one campaign."""
        with self._lock:
            return list(self._campaigns.get(campaign, []))

    def recipient(self, campaign: str, tag: str | None) -> str | None:
        """The address behind a recipient tag, from the campaign's run directories."""
        if tag is None:
            return None
        with self._lock:
            candidates = list(self._campaigns.get(campaign, []))
        for known in candidates:
            tags = self._tags_of(known)
            found = tags.find(tag) if tags is not None else None
            if found is not None:
                return found
        return None

    def _tags_of(self, known: KnownCampaign) -> _Tags | None:
        """A run's tags, loaded on first use (under their own lock: RCPT never waits)."""
        if known.run_dir is None:
            return None
        path = known.run_dir / RECIPIENTS
        try:
            mtime = path.stat().st_mtime_ns
        except OSError:
            return None
        with self._tags_lock:
            cached = self._tags.get(path)
            if cached is None or cached.mtime != mtime:
                try:
                    cached = _Tags(path, known.secret)
                except Exception as exc:  # a damaged list must not stop returns processing
                    log.warning("returns: cannot read %s: %s", path, exc)
                    return None
                self._tags[path] = cached
            return cached

    def verp_decoder(self, address: str) -> str | None:
        """The classifier's VerpDecoder: 'campaign:recipient' for a resolvable bounce token."""
        decoded = self.decode(address)
        if decoded is None or decoded.kind is not TokenKind.BOUNCE:
            return None
        email = self.recipient(decoded.campaign, decoded.recipient_tag)
        return f"{decoded.campaign}:{email}" if email else None

    def from_message_id(self, text: str) -> tuple[str, str | None] | None:
        """(campaign, recipient) from one of our Message-IDs in In-Reply-To / References."""
        for rcpt_tag, tag in _MESSAGE_ID_RE.findall(text or ""):
            with self._lock:
                names = [self._by_tag.get((s, tag.lower())) for s in self._secrets()]
            campaign = next((n for n in names if n is not None), None)
            if campaign is not None:
                return campaign, self.recipient(campaign, rcpt_tag.lower())
        return None


def _run_dirs(roots: Iterable[Path]) -> tuple[list[Path], list[Path]]:
    """(run directories, folders that may become one) among ``roots``.

    Each root is a run directory or a folder of them; a child folder without a spec yet is
    a run being created.
    """
    found: list[Path] = []
    pending: list[Path] = []
    for root in roots:
        if (root / SPEC).exists():
            found.append(root)
            continue
        try:
            children = sorted(p for p in root.iterdir() if p.is_dir())
        except OSError:
            continue
        for child in children:
            (found if (child / SPEC).exists() else pending).append(child)
    return found, pending
