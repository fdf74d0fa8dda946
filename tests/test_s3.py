"""s3:// recipients and exports against a real S3 server (moto's server mode) on loopback."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from conftest import make_spec
from helpers.dns_server import free_port
from raymail.errors import RecipientError, StorageError
from raymail.intake.recipients import load_recipients
from raymail.intake.staging import locate
from raymail.run.export import RunExport
from raymail.spec import S3Settings

BUCKET = "lists"
_KEYS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"}


@pytest.fixture(scope="module")
def s3_endpoint() -> Iterator[str]:
    """A moto S3 server on 127.0.0.1 with one bucket."""
    import boto3
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    try:
        client = boto3.client(
            "s3",
            endpoint_url=endpoint,
            region_name="us-east-1",
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
        )
        client.create_bucket(Bucket=BUCKET)
        yield endpoint
    finally:
        server.stop()


@pytest.fixture
def s3_env(s3_endpoint: str, monkeypatch: pytest.MonkeyPatch) -> str:
    """Endpoint and credentials the usual way: AWS_* environment variables."""
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_endpoint)
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    for key, value in _KEYS.items():
        monkeypatch.setenv(key, value)
    return s3_endpoint


def _put(url: str, data: bytes | pa.Table) -> None:
    loc = locate(url)
    if isinstance(data, pa.Table):
        pq.write_table(data, loc.path, filesystem=loc.fs)
    else:
        with loc.fs.open_output_stream(loc.path) as out:
            out.write(data)


def _s3_objects(prefix: str) -> dict[str, int]:
    loc = locate(f"s3://{BUCKET}/{prefix}")
    from pyarrow.fs import FileSelector, FileType

    infos = loc.fs.get_file_info(FileSelector(loc.path, recursive=True, allow_not_found=True))
    return {i.path[len(loc.path) + 1 :]: int(i.size) for i in infos if i.type == FileType.File}


def test_recipients_from_s3_csv_and_parquet(s3_env: str) -> None:
    csv = "email,name\nA@X.test,Ann\nb@y.test,Bob\nnot-an-address,Bad\n"
    _put(f"s3://{BUCKET}/in/list.csv", csv.encode())
    loaded = load_recipients(f"s3://{BUCKET}/in/list.csv")
    assert loaded.table.column("email").to_pylist() == ["A@x.test", "b@y.test"]
    assert loaded.rejects.column("row").to_pylist() == [3]
    assert loaded.source == f"s3://{BUCKET}/in/list.csv"

    _put(f"s3://{BUCKET}/in/list.parquet", pa.table({"email": ["c@z.test"], "name": ["Cy"]}))
    assert load_recipients(f"s3://{BUCKET}/in/list.parquet").table.num_rows == 1

    with pytest.raises(RecipientError, match=r"s3://lists/in/missing.csv: file not found"):
        load_recipients(f"s3://{BUCKET}/in/missing.csv")


def test_s3_settings_from_the_spec_win_over_the_environment(
    s3_endpoint: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    _put_with = S3Settings(
        endpoint_url=s3_endpoint,
        region="us-east-1",
        access_key_id="testing",
        secret_access_key="testing",
    )
    loc = locate(f"s3://{BUCKET}/spec/list.csv", _put_with)
    with loc.fs.open_output_stream(loc.path) as out:
        out.write(b"email\nd@w.test\n")
    # The environment points nowhere useful; the spec's settings must be the ones used.
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{free_port()}")
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    loaded = load_recipients(f"s3://{BUCKET}/spec/list.csv", _put_with)
    assert loaded.table.column("email").to_pylist() == ["d@w.test"]
    with pytest.raises(RecipientError, match=r"cannot open|file not found"):
        load_recipients(f"s3://{BUCKET}/spec/list.csv")  # the dead endpoint from the env


def test_export_to_a_missing_bucket_fails_before_sending(s3_env: str, tmp_path: Path) -> None:
    with pytest.raises(StorageError, match="bucket not found"):
        RunExport(tmp_path, "s3://no-such-bucket/runs/x").start()


@pytest.mark.slow
@pytest.mark.usefixtures("ray_session")
def test_campaign_reads_s3_and_exports_its_parquet(s3_env: str, tmp_path: Path) -> None:
    from raymail.driver.campaign import run_campaign
    from raymail.sink import SinkConfig, read_capture, run_sink

    n = 250
    rows = "".join(f"u{i}@d{i % 3}.test,N{i}\n" for i in range(n))
    _put(f"s3://{BUCKET}/in/big.csv", ("email,name\n" + rows + "broken\n").encode())
    export = f"s3://{BUCKET}/runs/s3test"
    with run_sink(SinkConfig(), capture_dir=tmp_path / "cap") as sink:
        spec = make_spec(f"s3://{BUCKET}/in/big.csv", sink.port, export=export)  # type: ignore[arg-type]
        report = run_campaign(spec, tmp_path / "run", live_progress=False)
    assert report.accepted == n and report.rejected_input == 1
    assert read_capture(tmp_path / "cap").group_by("rcpt_to").len().height == n

    objects = _s3_objects("runs/s3test")
    parts = sorted(k for k in objects if k.startswith("outcomes/part-"))
    local_parts = sorted(p.name for p in (tmp_path / "run" / "outcomes").glob("part-*.parquet"))
    assert [p.split("/")[1] for p in parts] == local_parts
    assert {"run.json", "report.json", "recipients.parquet", "rejects.parquet"} <= set(objects)
    assert not any(k.startswith(("journal", "run.lock", "spec")) for k in objects)

    fs_loc = locate(export)
    ledger = pq.read_table(f"{fs_loc.path}/outcomes", filesystem=fs_loc.fs)
    assert ledger.num_rows == n and set(ledger.column("status").to_pylist()) == {"accepted"}
    remote_report: dict[str, Any] = json.loads(_read(f"{export}/report.json"))
    assert remote_report["accepted"] == n and remote_report["status"] == "complete"
    assert json.loads(_read(f"{export}/run.json"))["status"] == "complete"

    # A later export (e.g. `raymail export` after a resume) uploads no ledger part again.
    again = RunExport(tmp_path / "run", export)
    assert again.sync() == 4  # recipients, rejects, run.json, report.json; no part


def _read(url: str) -> bytes:
    loc = locate(url)
    with loc.fs.open_input_stream(loc.path) as stream:
        return bytes(stream.read())
