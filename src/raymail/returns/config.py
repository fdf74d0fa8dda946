"""The returns server's config: its settings plus the campaigns whose returns it accepts.

Either a YAML file::

    settings: {listen: "0.0.0.0:25", reply_address: reply@bounce.shop.example, ...}
    runs: [/data/runs]                # run directories, or folders of them (rescanned)
    campaigns:                        # campaigns known without a run directory
      - {campaign: spring-sale, verp_secret: "...", domains: [bounce.shop.example]}
    domains: [shop.example]           # more domains for the reply / abuse addresses

or built from campaign spec files and run directories given on the command line, with the
settings of the first spec that has a ``returns`` section.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import Field, ValidationError

from raymail._io import read_yaml
from raymail._strict import StrictModel, error_lines
from raymail.errors import ReturnsError, SpecError
from raymail.returns.registry import CampaignRegistry, KnownCampaign
from raymail.run.rundir import SPEC, RunDir
from raymail.spec import ReturnsSettings, load_spec


class CampaignEntry(StrictModel):
    """A campaign known by its id and secret (no run directory needed)."""

    campaign: str = Field(..., description="Campaign id, as in its spec.")
    verp_secret: str = Field(..., min_length=1, description="The spec's verp_secret.")
    domains: list[str] = Field(
        ..., min_length=1, description="Its return (bounce) domain and unsubscribe domain."
    )
    run_dir: str | None = Field(
        None, description="Its run directory: lets recipient tags be resolved to addresses."
    )
    unsubscribe_local: str = Field(
        "unsubscribe", description="Local part of its List-Unsubscribe mailto address."
    )


class ReturnsConfig(StrictModel):
    """Everything ``raymail returns serve`` needs."""

    settings: ReturnsSettings = Field(default_factory=ReturnsSettings)
    runs: list[str] = Field(
        default_factory=list,
        description="Run directories, or folders of run directories; new ones are found "
        "when a token of an unknown campaign arrives.",
    )
    campaigns: list[CampaignEntry] = Field(default_factory=list)
    domains: list[str] = Field(
        default_factory=list, description="More domains served (reply and abuse addresses)."
    )

    def registry(self) -> CampaignRegistry:
        """The campaign registry this config describes."""
        known = [
            KnownCampaign(
                c.campaign,
                c.verp_secret,
                frozenset(d.lower() for d in c.domains),
                Path(c.run_dir) if c.run_dir else None,
                c.unsubscribe_local.lower(),
            )
            for c in self.campaigns
        ]
        return CampaignRegistry(known, [Path(p) for p in self.runs])


def parse_returns_config(data: Any, source: str = "<returns config>") -> ReturnsConfig:
    """Validate parsed YAML; ReturnsError naming every bad key."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ReturnsError(f"{source}: a returns config must be a mapping of keys to values")
    try:
        return ReturnsConfig.model_validate(data)
    except ValidationError as exc:
        raise ReturnsError("\n".join(error_lines(source, exc, ReturnsConfig))) from None


def load_returns_config(path: Path) -> ReturnsConfig:
    """Read a returns config YAML file."""
    return parse_returns_config(read_yaml(path, "returns config", ReturnsError), str(path))


def config_from_paths(paths: list[Path], base: ReturnsConfig | None = None) -> ReturnsConfig:
    """Add spec files, run directories and folders of run directories to a config.

    Settings come from ``base`` when given, else from the first spec with ``returns``.
    """
    settings: ReturnsSettings | None = base.settings if base is not None else None
    runs = list(base.runs) if base else []
    campaigns = list(base.campaigns) if base else []
    for path in paths:
        if path.is_dir():
            runs.append(str(path))
            spec_file = path / SPEC
            if settings is None and spec_file.exists():
                spec = RunDir(path).spec()
                settings = spec.returns
            continue
        try:
            spec = load_spec(path)
        except SpecError as exc:
            raise ReturnsError(f"{path}: not a campaign spec or run directory: {exc}") from None
        known = KnownCampaign.from_spec(spec)
        campaigns.append(
            CampaignEntry(
                campaign=spec.campaign,
                verp_secret=spec.verp_secret,
                domains=sorted(known.domains),
                unsubscribe_local=known.unsubscribe_local,
            )
        )
        if settings is None:
            settings = spec.returns
    return ReturnsConfig(
        settings=settings or ReturnsSettings(),
        runs=runs,
        campaigns=campaigns,
        domains=list(base.domains) if base else [],
    )


def resolve_config(config: Path | None, campaigns: list[Path]) -> ReturnsConfig:
    """What the CLI commands use: a config file and/or campaign specs and run directories."""
    base = load_returns_config(config) if config is not None else None
    if not campaigns:
        return base or ReturnsConfig()
    return config_from_paths(campaigns, base)
