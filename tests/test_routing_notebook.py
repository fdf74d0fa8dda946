"""The routing analysis notebook runs (nbclient, a real kernel) on a small generated run:
a learned and a round-robin campaign over a two-server topology on loopback."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import make_spec, write_csv
from raymail.driver.campaign import run_campaign
from raymail.sink import Rule, SinkConfig, SinkProcess, Topology

pytestmark = [pytest.mark.usefixtures("ray_session"), pytest.mark.slow]

NOTEBOOK = Path(__file__).resolve().parents[1] / "notebooks" / "routing_analysis.ipynb"
A, B = "127.0.0.2", "127.0.0.3"


def _small_runs(tmp_path: Path) -> dict[str, Path]:
    domains = ["alpha.test", "beta.test", "gamma.test"]
    rows = [f"u{i}@{domains[i % 3]},N{i}" for i in range(150)]
    csv = write_csv(tmp_path / "list.csv", "email,name", rows)
    links = {
        A: {d: Rule(latency_ms=5 if d != "beta.test" else 40) for d in domains},
        B: {d: Rule(latency_ms=40 if d != "beta.test" else 5) for d in domains},
    }
    runs = {"learned": tmp_path / "learned", "round_robin": tmp_path / "round_robin"}
    with SinkProcess(Topology(links=links).apply(SinkConfig())) as sink:
        for label, run_dir in runs.items():
            spec = make_spec(
                csv,
                sink.port,
                mx_override={d: f"mx.{d[:3]}.localhost:{sink.port}" for d in domains},
                source_addresses=[A, B],
                portion_size=10,
                routing={"policy": label, "probe_interval_s": 1.0},
            )
            run_campaign(spec, run_dir, live_progress=False)
    return runs


def test_routing_notebook_runs_on_a_generated_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, raymail_home: Path
) -> None:
    import nbformat
    from nbclient import NotebookClient

    runs = _small_runs(tmp_path)
    monkeypatch.setenv("ROUTING_RUNS", json.dumps({k: str(v) for k, v in runs.items()}))
    monkeypatch.setenv("ROUTING_TABLE", str(raymail_home / "routing"))
    monkeypatch.setenv("ROUTING_TOP_DOMAINS", "2")  # the third domain is rolled up
    monkeypatch.setenv("MPLBACKEND", "module://matplotlib_inline.backend_inline")
    notebook = nbformat.read(NOTEBOOK, as_version=4)  # type: ignore[no-untyped-call]  # nbformat.read has no annotations
    NotebookClient(notebook, timeout=120, kernel_name="python3", resources={
        "metadata": {"path": str(tmp_path)}}).execute()  # fmt: skip

    outputs = [o for cell in notebook.cells if cell.cell_type == "code" for o in cell.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    images = [o for o in outputs if "image/png" in o.get("data", {})]
    assert len(images) == 3  # latency, preferred-server map, makespans
    text = "\n".join(str(o.get("data", {}).get("text/plain", "")) for o in outputs)
    assert "round_robin" in text and "learned" in text
    assert "preferred" in text
    assert "other @ " in text  # the domain outside the top 2, rolled up by its MX host
