"""What the web service runs with: one campaign spec's settings plus the campaigns it serves.

The spec passed to ``raymail web serve --spec`` supplies the ``web`` section (base URL,
lists, limits), the delivery settings confirmations go out with (``mx_override``,
``smtp``, ``sender``) and the suppression list (its ``returns`` section, else the default
``$RAYMAIL_HOME/suppression.parquet`` that ``raymail suppression`` and the returns server
use). Tokens of that campaign and of every campaign found in ``runs`` (run directories,
or folders of them, rescanned) are accepted; recipients are resolved through the runs'
``recipients.parquet``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from raymail.errors import WebError
from raymail.spec import CampaignSpec, WebSettings, raymail_home
from raymail.tracking.events import events_root

__all__ = ["WebConfig"]


@dataclass(frozen=True)
class WebConfig:
    """Everything a replica needs; pickled to the Serve replicas as it is."""

    spec: CampaignSpec
    runs: tuple[str, ...] = ()
    extra_specs: tuple[CampaignSpec, ...] = ()
    # Resolved where the config is made, so every replica (whatever its environment)
    # writes to the same folders.
    home_path: str = ""
    suppression_path: str = ""

    def __post_init__(self) -> None:
        if self.spec.web is None:
            raise WebError(
                f"campaign {self.spec.campaign}: the spec has no 'web' section "
                "(at least web.base_url is needed)"
            )
        if not self.home_path:
            object.__setattr__(self, "home_path", str(self.spec.web.home_dir.resolve()))
        if not self.suppression_path:
            path = (
                self.spec.returns.suppression_file
                if self.spec.returns is not None
                else raymail_home() / "suppression.parquet"
            )
            object.__setattr__(self, "suppression_path", str(path.resolve()))

    @property
    def web(self) -> WebSettings:
        assert self.spec.web is not None
        return self.spec.web

    @property
    def home(self) -> Path:
        return Path(self.home_path)

    @property
    def suppression_file(self) -> Path:
        return Path(self.suppression_path)

    @property
    def events_dir(self) -> Path:
        return events_root(self.home)

    @property
    def secret(self) -> str:
        """Key of subscribe confirmations."""
        return self.web.secret or self.spec.verp_secret

    @property
    def specs(self) -> tuple[CampaignSpec, ...]:
        return (self.spec, *self.extra_specs)
