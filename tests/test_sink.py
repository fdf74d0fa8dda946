"""The embedded SMTP sink, exercised by real SMTP clients over loopback (no mocks)."""

from __future__ import annotations

import asyncio
import json
import smtplib
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import aiosmtplib
import pytest

from helpers.certs import self_signed
from raymail.sink import (
    SinkConfigError,
    SinkProcess,
    find_message_id,
    iter_capture,
    load_config,
    parse_config,
    raw_message,
    read_capture,
    run_sink,
)

pytestmark = pytest.mark.timeout(60)


def _message(message_id: str, body: str = "Hello.\r\n") -> bytes:
    return (
        f"From: sender@s.test\r\nTo: someone@d.test\r\nSubject: test\r\n"
        f"Message-ID: {message_id}\r\n\r\n{body}"
    ).encode()


async def _client(port: int) -> aiosmtplib.SMTP:
    """A connected client that does not upgrade to TLS by itself."""
    client = aiosmtplib.SMTP(hostname="127.0.0.1", port=port, timeout=10, start_tls=False)
    await client.connect()
    return client


def _send(
    port: int, rcpts: list[str], data: bytes, sender: str = "bounce@s.test"
) -> tuple[dict[str, aiosmtplib.SMTPResponse], str]:
    async def go() -> tuple[dict[str, aiosmtplib.SMTPResponse], str]:
        client = await _client(port)
        try:
            return await client.sendmail(sender, rcpts, data)
        finally:
            await client.quit()

    return asyncio.run(go())


def test_ehlo_advertises_pipelining_8bitmime_size_and_captures(tmp_path: Path) -> None:
    with run_sink(capture_dir=tmp_path) as sink:

        async def go() -> set[str]:
            client = await _client(sink.port)
            await client.ehlo()
            extensions = set(client.esmtp_extensions)
            await client.quit()
            return extensions

        extensions = asyncio.run(go())
        assert {"pipelining", "8bitmime", "size"} <= extensions
        assert "starttls" not in extensions and "auth" not in extensions
        errors, reply = _send(sink.port, ["a@any.example", "B@Other.Example"], _message("<m1@s>"))
        assert errors == {} and reply.startswith("2.0.0")
        _send(sink.port, ["c@any.example"], _message("<m2@s>", "caf\u00e9 8-bit\r\n..dot\r\n"))
        stats = sink.stats()
    assert (stats.transactions, stats.accepted, stats.connections) == (2, 3, 3)
    assert not [t for t in threading.enumerate() if t.name == "raymail-sink"]  # joined
    frame = read_capture(tmp_path)
    assert frame.height == 3
    assert sorted(frame["rcpt_to"].to_list()) == [
        "B@Other.Example",
        "a@any.example",
        "c@any.example",
    ]
    assert set(frame["message_id"].to_list()) == {"<m1@s>", "<m2@s>"}
    assert set(frame["mail_from"].to_list()) == {"bounce@s.test"}
    assert frame["peer"].str.starts_with("127.0.0.1:").all()
    # the raw bytes come back exactly as sent (dot-stuffing undone by the server)
    assert raw_message(tmp_path, "<m2@s>") == _message("<m2@s>", "caf\u00e9 8-bit\r\n..dot\r\n")
    assert read_capture(tmp_path, with_data=True)["data"][0] == _message("<m1@s>")


def test_pipelined_commands_in_one_write_get_all_replies() -> None:
    """PIPELINING is real: a whole transaction sent at once is answered in order."""
    with run_sink() as sink, socket.create_connection(("127.0.0.1", sink.port), 5) as sock:
        reader = sock.makefile("rb")
        assert reader.readline().startswith(b"220 ")
        sock.sendall(b"EHLO c.test\r\n")
        for _ in range(10):  # bounded: the EHLO reply has a handful of lines
            if reader.readline().startswith(b"250 "):
                break
        sock.sendall(
            b"MAIL FROM:<b@s.test>\r\nRCPT TO:<x@d.test>\r\nRCPT TO:<y@d.test>\r\nDATA\r\n"
        )
        codes = [reader.readline()[:3] for _ in range(4)]
        assert codes == [b"250", b"250", b"250", b"354"]
        sock.sendall(_message("<p@s>") + b".\r\nQUIT\r\n")
        assert reader.readline().startswith(b"250 2.0.0")
        assert reader.readline().startswith(b"221")
        assert sink.stats().accepted == 2


class _Raw:
    """A bare socket SMTP client: exact bytes on the wire, one reply line at a time."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), 5)
        self.reader = self.sock.makefile("rb")
        assert self.reply().startswith(b"220 ")

    def reply(self) -> bytes:
        return self.reader.readline()

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def close(self) -> None:
        self.reader.close()
        self.sock.close()


def test_data_framing_edge_cases(tmp_path: Path) -> None:
    config = parse_config({"max_message_bytes": 4096})
    with run_sink(config, capture_dir=tmp_path) as sink:
        raw = _Raw(sink.port)
        try:
            raw.send(b"HELO c.test\r\n")
            assert raw.reply().startswith(b"250")

            def transaction(wire: bytes, pieces: int = 1) -> bytes:
                raw.send(b"MAIL FROM:<b@s.test>\r\nRCPT TO:<x@d.test>\r\nDATA\r\n")
                assert [raw.reply()[:3] for _ in range(3)] == [b"250", b"250", b"354"]
                step = max(1, len(wire) // pieces)
                for start in range(0, len(wire), step):  # split writes: framing across reads
                    raw.send(wire[start : start + step])
                    if pieces > 1:
                        time.sleep(0.005)
                return raw.reply()

            assert transaction(b".\r\n").startswith(b"250")  # empty message
            stuffed = b"..lead\r\na.\r\n..\r\n.b\r\nend.\r\n.\r\n"
            assert transaction(stuffed, pieces=len(stuffed)).startswith(b"250")
            assert transaction(b"x" * 5000 + b"\r\n.\r\n").startswith(b"552")  # too big
            assert transaction(b"Message-ID: <ok@s>\r\n\r\nok\r\n.\r\n").startswith(b"250")
        finally:
            raw.close()
    bodies = [m.raw for m in iter_capture(tmp_path)]
    assert bodies == [
        b"",
        b".lead\r\na.\r\n.\r\nb\r\nend.\r\n",
        b"Message-ID: <ok@s>\r\n\r\nok\r\n",
    ]


def test_large_message_with_long_lines_arrives_intact(tmp_path: Path) -> None:
    body = b"".join(b"%d " % i * 400 + b"\r\n" for i in range(300))  # ~500 KB, long lines
    message = _message("<big@s>").replace(b"Hello.\r\n", body)
    with run_sink(capture_dir=tmp_path) as sink:
        _send(sink.port, ["big@d.test"], message)
    assert raw_message(tmp_path, "<big@s>") == message


def test_domain_rules_fail_per_recipient_with_enhanced_codes(tmp_path: Path) -> None:
    config = parse_config(
        {
            "domains": {
                "Temp.Test": {"tempfail_rate": 1.0},
                "perm.test": {"permfail_rate": 1.0, "permfail_reply": "554 5.7.1 Go away"},
            }
        }
    )
    with run_sink(config, capture_dir=tmp_path) as sink:
        errors, _ = _send(
            sink.port, ["ok@fine.test", "t@temp.test", "p@perm.test"], _message("<x@s>")
        )
        with pytest.raises(aiosmtplib.SMTPRecipientsRefused) as refused:
            _send(sink.port, ["only@perm.test"], _message("<y@s>"))
        stats = sink.stats()
    assert errors["t@temp.test"].code == 451 and errors["t@temp.test"].message.startswith("4.3.0")
    assert errors["p@perm.test"].code == 554 and errors["p@perm.test"].message.startswith("5.7.1")
    assert refused.value.recipients[0].code == 554
    assert (stats.tempfailed, stats.permfailed, stats.accepted) == (1, 2, 1)
    assert read_capture(tmp_path)["rcpt_to"].to_list() == ["ok@fine.test"]


def test_address_overrides_beat_domain_rules(tmp_path: Path) -> None:
    config = parse_config(
        {
            "domains": {"d.test": {"permfail_rate": 1.0}},
            "addresses": {
                "Keep@D.test": "accept",
                "soft@x.test": "tempfail",
                "hard@x.test": "permfail",
            },
        }
    )
    with run_sink(config, capture_dir=tmp_path) as sink:
        rcpts = ["keep@d.test", "other@d.test", "soft@x.test", "hard@x.test", "fine@x.test"]
        errors, _ = _send(sink.port, rcpts, _message("<o@s>"))
    assert {k: v.code for k, v in errors.items()} == {
        "other@d.test": 550,
        "soft@x.test": 451,
        "hard@x.test": 550,
    }
    assert sorted(read_capture(tmp_path)["rcpt_to"].to_list()) == ["fine@x.test", "keep@d.test"]


def test_drop_closes_the_connection_before_the_data_reply(tmp_path: Path) -> None:
    config = parse_config(
        {"domains": {"flaky.test": {"drop_rate": 1.0}}, "addresses": {"gone@d.test": "drop"}}
    )
    with run_sink(config, capture_dir=tmp_path) as sink:
        for rcpt in ("gone@d.test", "x@flaky.test"):
            with pytest.raises(aiosmtplib.SMTPServerDisconnected):
                _send(sink.port, [rcpt, "ok@d.test"], _message("<d@s>"))
        _send(sink.port, ["ok@d.test"], _message("<e@s>"))  # the sink still serves others
        stats = sink.stats()
    assert (stats.dropped, stats.dropped_recipients, stats.transactions) == (2, 4, 1)
    assert read_capture(tmp_path)["message_id"].to_list() == ["<e@s>"]


def test_latency_delays_the_data_reply() -> None:
    config = parse_config(
        {"default": {"latency_ms": 0}, "domains": {"slow.test": {"latency_ms": 400}}}
    )
    with run_sink(config) as sink:
        started = time.monotonic()
        _send(sink.port, ["a@fast.test"], _message("<f@s>"))
        fast = time.monotonic() - started
        started = time.monotonic()
        _send(sink.port, ["a@slow.test"], _message("<s@s>"))
        slow = time.monotonic() - started
    assert slow >= 0.4
    assert fast < 0.3


def test_domain_rule_inherits_unset_keys_from_default() -> None:
    config = parse_config(
        {"default": {"permfail_rate": 1.0}, "domains": {"slowfail.test": {"latency_ms": 1}}}
    )
    with run_sink(config) as sink, pytest.raises(aiosmtplib.SMTPRecipientsRefused):
        _send(sink.port, ["a@slowfail.test"], _message("<i@s>"))


def test_seeded_faults_are_reproducible() -> None:
    config = parse_config({"seed": 7, "default": {"tempfail_rate": 0.5}})
    rcpts = [f"r{i}@d.test" for i in range(40)]
    refused: list[set[str]] = []
    for _ in range(2):
        with run_sink(config) as sink:
            errors, _ = _send(sink.port, rcpts, _message("<r@s>"))
        refused.append(set(errors))
    assert refused[0] == refused[1]
    assert 5 < len(refused[0]) < 35


def test_starttls_with_a_generated_certificate(tmp_path: Path) -> None:
    cert, key = self_signed(tmp_path)
    client_context = ssl.create_default_context(cafile=str(cert))  # verifies for real
    with run_sink(capture_dir=tmp_path / "cap", tls_cert=cert, tls_key=key) as sink:

        async def go() -> tuple[bool, object, dict[str, aiosmtplib.SMTPResponse]]:
            client = await _client(sink.port)
            await client.ehlo()
            offered = client.supports_extension("starttls")
            await client.starttls(tls_context=client_context)
            peercert = client.get_transport_info("peercert")
            errors, _ = await client.sendmail("b@s.test", ["t@tls.test"], _message("<t@s>"))
            await client.quit()
            return offered, peercert, errors

        offered, peercert, errors = asyncio.run(go())
        stats = sink.stats()
    assert offered and peercert and errors == {}
    assert stats.connections == 1  # the TLS upgrade is not a new connection
    assert read_capture(tmp_path / "cap")["rcpt_to"].to_list() == ["t@tls.test"]


def test_config_rejects_unknown_keys_by_name(tmp_path: Path) -> None:
    path = tmp_path / "sink.yaml"
    path.write_text("domains:\n  a.test:\n    latncy_ms: 5\n", encoding="utf-8")
    with pytest.raises(SinkConfigError, match=r"unknown key 'domains\.a\.test\.latncy_ms'") as err:
        load_config(path)
    assert "did you mean 'latency_ms'" in str(err.value) and str(path) in str(err.value)
    with pytest.raises(SinkConfigError, match="unknown key 'sede'"):
        parse_config({"sede": 1})
    with pytest.raises(SinkConfigError, match="addresses"):
        parse_config({"addresses": {"a@b.test": "explode"}})
    with pytest.raises(SinkConfigError, match="tempfail_reply"):
        parse_config({"default": {"tempfail_reply": "250 fine"}})
    with pytest.raises(SinkConfigError):
        parse_config({"default": {"tempfail_rate": 0.7, "permfail_rate": 0.7}})
    path.write_text("seed: 3\ndefault:\n  latency_ms: 2\n", encoding="utf-8")
    assert load_config(path).default.latency_ms == 2


def test_only_loopback_addresses_are_served() -> None:
    for host in ("0.0.0.0", "192.168.1.1", "example.com"):
        with pytest.raises(SinkConfigError, match="loopback"), run_sink(host=host):
            pass  # pragma: no cover


@pytest.fixture
def sink_process(tmp_path: Path) -> Iterator[SinkProcess]:
    config = parse_config(  # d.test inherits permfail_rate 1.0; yes@d.test is forced through
        {
            "default": {"permfail_rate": 1.0},
            "domains": {"d.test": {"latency_ms": 1}},
            "addresses": {"yes@d.test": "accept"},
        }
    )
    process = SinkProcess(config, capture_dir=tmp_path / "cap", stats_path=tmp_path / "stats.json")
    try:
        yield process.start()
    finally:
        process.stop()  # also when the test failed: no sink outlives its test


def test_sink_process_reports_its_port_and_stops(sink_process: SinkProcess, tmp_path: Path) -> None:
    assert sink_process.port > 0 and sink_process.pid is not None
    with smtplib.SMTP(sink_process.host, sink_process.port, timeout=10) as client:
        refused = client.sendmail("b@s.test", ["yes@d.test", "no@d.test"], _message("<p@s>"))
    assert refused["no@d.test"][0] == 550
    live = sink_process.stats()
    assert (live.transactions, live.accepted, live.permfailed) == (1, 1, 1)
    assert sink_process.stderr_text() == ""
    assert sink_process.stop() == 0
    assert sink_process.pid is None
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection((sink_process.host, sink_process.port), 2).close()
    written = json.loads((tmp_path / "stats.json").read_text(encoding="utf-8"))
    assert written["accepted"] == 1 and written["permfailed"] == 1
    assert read_capture(tmp_path / "cap")["rcpt_to"].to_list() == ["yes@d.test"]


def test_sink_process_start_failure_is_a_clear_error(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        process = SinkProcess(port=busy.getsockname()[1], start_timeout_s=20)
        with pytest.raises(Exception, match="exited with code 1 before listening") as err:
            process.start()
    assert "cannot listen" in str(err.value)
    assert process.pid is None


def test_read_capture_counts_deliveries_and_skips_a_torn_last_line(tmp_path: Path) -> None:
    with run_sink(capture_dir=tmp_path) as sink:
        for i in range(5):
            _send(sink.port, [f"r{i}@d.test", "all@d.test"], _message(f"<c{i}@s>"))
    files = sorted(tmp_path.glob("capture-*.jsonl"))
    assert len(files) == 1
    with files[0].open("ab") as fh:
        fh.write(b'{"mail_from": "torn')  # a sink killed mid-write
    frame = read_capture(tmp_path)
    counts = dict(frame.group_by("rcpt_to").len().iter_rows())
    assert counts["all@d.test"] == 5 and counts["r3@d.test"] == 1 and frame.height == 10
    assert frame["message_id"].n_unique() == 5
    assert [m.line for m in iter_capture(tmp_path)] == [1, 2, 3, 4, 5]
    assert read_capture(tmp_path / "missing").height == 0


def test_find_message_id_reads_only_the_header_block() -> None:
    assert find_message_id(b"Subject: x\r\nMessage-ID: <a@b>\r\n\r\nbody") == "<a@b>"
    assert find_message_id(b"message-id:\r\n <folded@b>\r\nX: y\r\n\r\n") == "<folded@b>"
    assert find_message_id(b"X-Message-ID: <no@b>\r\n\r\nMessage-ID: <body@b>\r\n") is None
    assert find_message_id(b"Subject: x\n\nno id\n") is None
    assert find_message_id(b"MESSAGE-ID: <unix@b>\nTo: x\n\nbody") == "<unix@b>"
