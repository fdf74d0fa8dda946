"""The raw archive: records, segments, indexes, torn tails, concurrent writers."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from raymail.errors import ReturnsError
from raymail.returns.archive import Archive, scan_segment


def _raw(i: int) -> bytes:
    return f"Subject: message {i}\r\n\r\nbody {i}\r\n".encode() + bytes(range(256))


def test_append_read_and_index(tmp_path: Path) -> None:
    archive = Archive(tmp_path)
    stored = [
        archive.append(_raw(i), mail_from="<>", rcpt_tos=[f"r{i}@x.test"], source="smtp",
                       label="127.0.0.1:1")
        for i in range(3)
    ]  # fmt: skip
    # readable at once by another reader, before the segment is sealed
    assert Archive(tmp_path).index()["ref"].to_list() == [m.ref for m in stored]
    message, raw = Archive(tmp_path).read(stored[1].ref)
    assert raw == _raw(1) and message.rcpt_tos == ("r1@x.test",)
    assert message.sha256 == stored[1].sha256 and message.size == len(_raw(1))
    archive.close()
    assert len(list((tmp_path / "index").glob("*.parquet"))) == 1  # sealed: indexed
    index = Archive(tmp_path).index()
    assert index["label"].to_list() == ["127.0.0.1:1"] * 3
    assert [raw for _, raw in Archive(tmp_path).iter_raw()] == [_raw(i) for i in range(3)]
    with pytest.raises(ReturnsError, match="no message"):
        archive.read("seg-nothing:0")


def test_segments_rotate_so_files_stay_few(tmp_path: Path) -> None:
    archive = Archive(tmp_path, segment_bytes=2000)
    for i in range(20):
        archive.append(_raw(i), mail_from="", rcpt_tos=[], source="import", label=f"f{i}")
    archive.close()
    segments = list((tmp_path / "segments").glob("*.rma"))
    assert 3 <= len(segments) <= 10
    assert Archive(tmp_path).index().height == 20


def test_torn_tail_of_a_dead_writer_is_cut_and_indexed(tmp_path: Path) -> None:
    archive = Archive(tmp_path)
    kept = archive.append(_raw(1), mail_from="", rcpt_tos=[], source="smtp", label="a")
    path = tmp_path / "segments" / f"{kept.segment}.rma"
    whole = path.stat().st_size
    archive._segment.fh.close()  # type: ignore[union-attr]  # the writer dies (lock gone)
    with path.open("ab") as fh:  # ...in the middle of the next record
        fh.write(b'RMA1 40 5000\n{"received_at": ')
    assert scan_segment(path)[1] == whole
    index = Archive(tmp_path).index()
    assert index["ref"].to_list() == [kept.ref]
    assert path.stat().st_size == whole  # cut back to the last acknowledged record
    assert (tmp_path / "index" / f"{kept.segment}.parquet").exists()


def test_concurrent_appends_stay_whole(tmp_path: Path) -> None:
    archive = Archive(tmp_path)

    def write(n: int) -> None:
        for i in range(25):
            archive.append(_raw(n * 100 + i), mail_from="", rcpt_tos=[], source="smtp", label="")

    threads = [threading.Thread(target=write, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    second = Archive(tmp_path)  # another writer in the same folder: its own segment
    second.append(_raw(999), mail_from="", rcpt_tos=[], source="import", label="")
    archive.close()
    second.close()
    raws = sorted(raw for _, raw in Archive(tmp_path).iter_raw())
    assert raws == sorted([_raw(n * 100 + i) for n in range(4) for i in range(25)] + [_raw(999)])
