"""The campaign analytics notebook runs (nbclient, a real kernel) on a small campaign's
events written through the real writers and synced from a ledger and returns events."""

from __future__ import annotations

from pathlib import Path

import pytest
from tracking_data import recipients, write_ledger, write_returns, write_web_hits

from raymail.tracking.sync import sync_ledger, sync_returns

pytestmark = pytest.mark.slow

NOTEBOOK = Path(__file__).resolve().parents[2] / "notebooks" / "campaign_analytics.ipynb"


def test_campaign_notebook_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import nbformat
    from nbclient import NotebookClient

    root = tmp_path / "events"
    write_ledger(tmp_path / "run", "spring", recipients(30), failed={7})
    write_web_hits(root, "spring")
    write_returns(tmp_path / "home", "spring")
    sync_ledger(root, tmp_path / "run")
    sync_returns(root, tmp_path / "home" / "returns")
    monkeypatch.setenv("CAMPAIGN", "spring")
    monkeypatch.setenv("EVENTS_ROOT", str(root))
    monkeypatch.setenv("TOP_DOMAINS", "2")  # c.test is rolled up by its MX host
    monkeypatch.setenv("MPLBACKEND", "module://matplotlib_inline.backend_inline")
    notebook = nbformat.read(NOTEBOOK, as_version=4)  # type: ignore[no-untyped-call]  # nbformat.read has no annotations
    NotebookClient(notebook, timeout=120, kernel_name="python3", resources={
        "metadata": {"path": str(tmp_path)}}).execute()  # fmt: skip

    outputs = [o for cell in notebook.cells if cell.cell_type == "code" for o in cell.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    images = [o for o in outputs if "image/png" in o.get("data", {})]
    assert len(images) == 2  # by hour, by domain
    text = "\n".join(str(o.get("data", {}).get("text/plain", "")) for o in outputs)
    assert "unique_open_rate" in text and "google_image_proxy" in text
    assert "click_burst" in text and "pricing" in text
    assert "other @ mx" in text and "a.test" in text
