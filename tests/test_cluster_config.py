"""cluster.yaml is a valid Ray cluster-launcher file with a delivery worker type."""

from __future__ import annotations

from pathlib import Path

import yaml
from ray.autoscaler._private.util import prepare_config, validate_config

from raymail.runtime import DELIVERY_RESOURCE

ROOT = Path(__file__).resolve().parent.parent


def test_cluster_yaml_validates_against_rays_schema() -> None:
    config = yaml.safe_load((ROOT / "cluster.yaml").read_text())
    # prepare_config fills in Ray's defaults the way `ray up` does before validating.
    validate_config(prepare_config(config))  # raises when the file breaks Ray's schema


def test_only_workers_offer_the_delivery_resource() -> None:
    config = yaml.safe_load((ROOT / "cluster.yaml").read_text())
    types = config["available_node_types"]
    head = types[config["head_node_type"]]
    assert head["resources"].get(DELIVERY_RESOURCE, 0) == 0
    workers = [t for name, t in types.items() if name != config["head_node_type"]]
    assert any(t["resources"].get(DELIVERY_RESOURCE, 0) >= 1 for t in workers)
