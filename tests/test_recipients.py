"""Recipient loading: normalisation, every kind of reject, and whole-file errors."""

from __future__ import annotations

import random
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from raymail.errors import RecipientError
from raymail.intake.address import check_address
from raymail.intake.recipients import load_recipients
from raymail.schema import REJECTS_SCHEMA


def write_csv(tmp_path: Path, text: str, name: str = "list.csv") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def one_column(tmp_path: Path, values: list[str]) -> Path:
    return write_csv(tmp_path, "email\n" + "".join(f"{v}\n" for v in values))


def reasons(load: object) -> dict[int, str]:
    rejects = load.rejects  # type: ignore[attr-defined]
    return dict(zip(rejects["row"].to_pylist(), rejects["reason"].to_pylist(), strict=True))


def assert_accounted(load: object) -> None:
    """Every data row is in exactly one of table and rejects."""
    table_rows = load.table["row"].to_pylist()  # type: ignore[attr-defined]
    reject_rows = load.rejects["row"].to_pylist()  # type: ignore[attr-defined]
    assert load.rows_read == len(table_rows) + len(reject_rows)  # type: ignore[attr-defined]
    assert sorted(table_rows + reject_rows) == list(range(1, load.rows_read + 1))  # type: ignore[attr-defined]


def test_clean_csv_normalises_and_keeps_merge_fields_as_strings(tmp_path: Path) -> None:
    path = write_csv(
        tmp_path,
        " email , first name ,zip\n  John.Doe@EXAMPLE.COM ,John,00123\nann@Example.org,,\n",
    )
    load = load_recipients(path)
    assert load.table.column_names == ["row", "email", "domain", "first name", "zip"]
    assert load.table.schema.field("row").type == pa.int64()
    assert all(f.type == pa.string() for f in list(load.table.schema)[1:])
    assert load.table.to_pylist() == [
        {
            "row": 1,
            "email": "John.Doe@example.com",
            "domain": "example.com",
            "first name": "John",
            "zip": "00123",
        },
        {
            "row": 2,
            "email": "ann@example.org",
            "domain": "example.org",
            "first name": "",
            "zip": "",
        },
    ]
    assert load.rejects.schema == REJECTS_SCHEMA
    assert (load.rows_read, load.accepted, load.rejected, load.duplicates) == (2, 2, 0, 0)
    assert load.source == str(path)


def test_idna_domain_becomes_a_label(tmp_path: Path) -> None:
    load = load_recipients(one_column(tmp_path, ["Joerg@Bücher.DE", "x@例え。テスト", "Jörg@x.de"]))
    assert load.table["email"].to_pylist() == ["Joerg@xn--bcher-kva.de", "x@xn--r8jz45g.xn--zckzah"]
    assert load.table["domain"].to_pylist() == ["xn--bcher-kva.de", "xn--r8jz45g.xn--zckzah"]
    assert reasons(load) == {3: "non-ASCII local part (SMTPUTF8 not supported)"}


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        ("", "empty address"),
        ("   ", "empty address"),
        ("john.example.com", "missing @"),
        ("a@b@example.com", "more than one @"),
        ('"john doe"@example.com', "quoted local part not supported"),
        ("john doe@example.com", "whitespace or control character in address"),
        ("john\u0007@example.com", "whitespace or control character in address"),
        ("@example.com", "empty local part"),
        ("john@", "empty domain"),
        ("jöhn@example.com", "non-ASCII local part (SMTPUTF8 not supported)"),
        ("a" * 65 + "@example.com", "local part longer than 64 characters"),
        (".john@example.com", "local part starts or ends with a dot"),
        ("john.@example.com", "local part starts or ends with a dot"),
        ("jo..hn@example.com", "consecutive dots in local part"),
        ("jo(hn@example.com", "invalid character '(' in local part"),
        ("john@localhost", "domain has no dot"),
        ("john@.example.com", "domain starts with a dot"),
        ("john@example.com.", "domain ends with a dot"),
        ("john@example..com", "empty label in domain"),
        ("john@" + "a" * 64 + ".com", "domain label too long"),
        ("john@-example.com", "domain label starts or ends with a hyphen"),
        ("john@example-.com", "domain label starts or ends with a hyphen"),
        ("john@exa_mple.com", "invalid character '_' in domain"),
        ("john@[192.0.2.1]", "invalid character '[' in domain"),
        ("john@" + ".".join(["a" * 63] * 4) + ".com", "domain longer than 253 characters"),
        ("a" * 64 + "@" + ".".join(["b" * 49] * 4) + ".cc", "address longer than 254 characters"),
        ("john@exa\u200dmple.com", "invalid international domain label"),
    ],
)
def test_bad_address_is_rejected_with_specific_reason(
    tmp_path: Path, value: str, reason: str
) -> None:
    path = write_csv(tmp_path, f"email,name\ngood@example.com,a\n{_csv_field(value)},b\n")
    load = load_recipients(path)
    assert load.table["row"].to_pylist() == [1]
    got = load.rejects.to_pylist()
    assert len(got) == 1
    assert got[0]["row"] == 2
    assert got[0]["field"] == "email"
    assert got[0]["file"] == str(path)
    assert got[0]["value"] == value
    assert got[0]["reason"].startswith(reason)
    assert_accounted(load)


def _csv_field(value: str) -> str:
    return '"' + value.replace('"', '""') + '"'


def test_fast_path_agrees_with_exact_check(tmp_path: Path) -> None:
    """The vectorised check accepts only what check_address accepts, with the same result."""
    values = [
        "a@b.co",
        "A.B-C+tag@Sub.Example.COM",
        "o'brien@example.ie",
        "x!#$%&'*+/=?^_`{|}~-@example.com",
        "1@2.3",
        "a@b-.com",
        "a@1-2.c-d.e",
        "a" * 64 + "@" + "b" * 63 + ".com",
        " padded@example.com\t",
        "\u00a0nbsp@example.com\u00a0",
        "u@ÉXAMPLE.com",
        "u@xn--bcher-kva.de",
    ]
    load = load_recipients(one_column(tmp_path, [_csv_field(v) for v in values]))
    assert_accounted(load)
    by_row = {r["row"]: r for r in load.table.to_pylist()}
    why = reasons(load)
    for row, value in enumerate(values, start=1):
        expected = check_address(value)
        if expected.reason is None:
            assert by_row[row]["email"] == expected.email, value
            assert by_row[row]["domain"] == expected.domain, value
        else:
            assert why[row] == expected.reason, value


def test_fast_path_agrees_with_exact_check_on_random_addresses(tmp_path: Path) -> None:
    """Seeded fuzz: the table and rejects equal a pure-Python run of check_address."""
    rng = random.Random(20240601)
    pieces = ["a", "Z", "0", ".", "-", "_", "@", "+", "é", "\t", " ", "x.com", "B.Org", "..", "'"]
    values = ["".join(rng.choice(pieces) for _ in range(rng.randint(1, 12))) for _ in range(3000)]
    local = ["a", "Z", "0", ".", "-", "_", "+", "'", "é", "~"]
    domain = ["x", "Ex", "-", "0", ".", "B.Org", "é", "ü.de", ".com", "_"]
    for _ in range(3000):
        values.append(
            "".join(rng.choice(local) for _ in range(rng.randint(1, 4)))
            + "@"
            + "".join(rng.choice(domain) for _ in range(rng.randint(1, 4)))
        )
    load = load_recipients(one_column(tmp_path, [_csv_field(v) for v in values]))
    assert_accounted(load)
    first: dict[str, int] = {}
    kept, why = {}, {}
    for row, value in enumerate(values, start=1):
        result = check_address(value)
        if result.email is None:
            why[row] = result.reason
        elif result.email.lower() in first:
            why[row] = f"duplicate of row {first[result.email.lower()]}"
        else:
            first[result.email.lower()] = row
            kept[row] = (result.email, result.domain)
    table = load.table.to_pylist()
    assert {r["row"]: (r["email"], r["domain"]) for r in table} == kept
    assert reasons(load) == why
    assert len(kept) > 300 and len(why) > 1000  # both paths really exercised


def test_duplicates_keep_the_first(tmp_path: Path) -> None:
    values = [
        "a@x.com",
        "b@x.com",
        "A@X.COM",
        "a@x.com",
        "b@X.com",
        "c@bücher.de",
        "C@xn--bcher-kva.de",
    ]
    load = load_recipients(one_column(tmp_path, values))
    assert load.table["row"].to_pylist() == [1, 2, 6]
    assert reasons(load) == {
        3: "duplicate of row 1",
        4: "duplicate of row 1",
        5: "duplicate of row 2",
        7: "duplicate of row 6",
    }
    assert load.duplicates == 4
    assert load.rejects["value"].to_pylist() == [
        "A@X.COM",
        "a@x.com",
        "b@X.com",
        "C@xn--bcher-kva.de",
    ]
    assert_accounted(load)


def test_malformed_rows_become_rejects_with_their_row(tmp_path: Path) -> None:
    path = write_csv(
        tmp_path,
        'email,name\na@x.com,A\nb@x.com,B,extra\n\nc@x.com\nd@x.com,"two\nlines"\ne@x.com,E\n'
        "f@x.com,F,G\n",
    )
    load = load_recipients(path)
    assert load.table.select(["row", "email", "name"]).to_pylist() == [
        {"row": 1, "email": "a@x.com", "name": "A"},
        {"row": 4, "email": "d@x.com", "name": "two\nlines"},
        {"row": 5, "email": "e@x.com", "name": "E"},
    ]
    got = load.rejects.to_pylist()
    assert [(r["row"], r["field"], r["value"]) for r in got] == [
        (2, None, "b@x.com,B,extra"),
        (3, None, "c@x.com"),
        (6, None, "f@x.com,F,G"),
    ]
    assert got[0]["reason"] == "malformed CSV row: expected 2 columns, got 3"
    assert got[1]["reason"] == "malformed CSV row: expected 2 columns, got 1"
    assert_accounted(load)


def test_row_numbers_stay_right_across_csv_blocks(tmp_path: Path) -> None:
    """Malformed rows far into a multi-block file still get the right row number."""
    n = 120_000
    broken = {5, 40_000, 99_999, n}
    lines = ["email,i"]
    for row in range(1, n + 1):
        lines.append(f"u{row}@x{row % 97}.com" + ("" if row in broken else f",{row}"))
    path = write_csv(tmp_path, "\n".join(lines) + "\n")
    load = load_recipients(path)
    assert sorted(load.rejects["row"].to_pylist()) == sorted(broken)
    table = load.table
    assert table["row"].to_pylist() == [int(i) for i in table["i"].to_pylist()]
    assert_accounted(load)


def test_parquet_input_casts_fields_to_strings(tmp_path: Path) -> None:
    path = tmp_path / "list.parquet"
    pq.write_table(
        pa.table(
            {
                "email": ["a@X.com", None, "bad"],
                "age": pa.array([41, None, 7], pa.int32()),
                "vip": [True, False, None],
            }
        ),
        path,
    )
    load = load_recipients(path)
    assert load.table.to_pylist() == [
        {"row": 1, "email": "a@x.com", "domain": "x.com", "age": "41", "vip": "true"}
    ]
    assert reasons(load) == {2: "empty address", 3: "missing @"}
    assert_accounted(load)


def test_bom_header_is_understood(tmp_path: Path) -> None:
    path = tmp_path / "bom.csv"
    path.write_bytes(b"\xef\xbb\xbfemail,name\na@x.com,A\n")
    assert load_recipients(path).table["email"].to_pylist() == ["a@x.com"]


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("name,mail\nA,a@x.com\n", "no 'email' column; columns found: 'name', 'mail'"),
        ("Email\na@x.com\n", "names are case-sensitive: found 'Email'"),
        ("email,domain\na@x.com,x\n", "column 'domain' is reserved"),
        ("email,row\na@x.com,1\n", "column 'row' is reserved"),
        ("email, name ,name\na@x.com,a,b\n", "column 'name' appears more than once"),
        ("email,,x\na@x.com,a,b\n", "column 2 has an empty name"),
        ("", "empty file"),
    ],
)
def test_unusable_header_is_an_error_naming_the_file(
    tmp_path: Path, content: str, message: str
) -> None:
    path = write_csv(tmp_path, content)
    with pytest.raises(RecipientError, match=message) as info:
        load_recipients(path)
    assert str(path) in str(info.value)
    assert "\n" not in str(info.value)


def test_missing_file_unknown_type_and_bad_encoding(tmp_path: Path) -> None:
    with pytest.raises(RecipientError, match="file not found"):
        load_recipients(tmp_path / "nope.csv")
    with pytest.raises(RecipientError, match=r"unknown file type '\.xlsx'"):
        load_recipients(tmp_path / "list.xlsx")
    latin = tmp_path / "latin.csv"
    latin.write_bytes(b"email,n\xe4me\na@x.com,J\n")
    with pytest.raises(RecipientError, match=r"latin\.csv: cannot read CSV: .*must be UTF-8"):
        load_recipients(latin)
    garbage = tmp_path / "garbage.parquet"
    garbage.write_bytes(b"not parquet at all")
    with pytest.raises(RecipientError, match=r"garbage\.parquet: cannot read Parquet"):
        load_recipients(garbage)


def test_nested_parquet_column_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "nested.parquet"
    pq.write_table(pa.table({"email": ["a@x.com"], "tags": [["a", "b"]]}), path)
    with pytest.raises(RecipientError, match="column 'tags' of type list"):
        load_recipients(path)


def test_header_only_file_gives_empty_table(tmp_path: Path) -> None:
    load = load_recipients(write_csv(tmp_path, "email,name\n"))
    assert load.table.num_rows == 0
    assert load.table.column_names == ["row", "email", "domain", "name"]
    assert load.rejects.num_rows == 0


def test_a_row_with_invalid_utf8_is_rejected_alone(tmp_path: Path) -> None:
    """A list exported from a spreadsheet in cp1252: one bad row, the rest loads."""
    path = tmp_path / "export.csv"
    rows = [b"email,name", b"a@x.com,Ann", b"b@x.com,J\xf6rg", b"c@x.com,Cy", b"d@x.com,Dee"]
    path.write_bytes(b"\n".join(rows) + b"\n")
    load = load_recipients(path)
    assert load.table.column("email").to_pylist() == ["a@x.com", "c@x.com", "d@x.com"]
    assert load.table.column("row").to_pylist() == [1, 3, 4]
    (reject,) = load.rejects.to_pylist()
    assert reject["row"] == 2 and reject["field"] == "name" and reject["file"] == str(path)
    assert "not valid utf-8" in reject["reason"] and "byte 0xf6" in reject["reason"]
    assert "recipients_encoding" in reject["reason"]
    assert reject["value"] == "J\\xf6rg"


def test_recipients_encoding_reads_such_a_list_whole(tmp_path: Path) -> None:
    path = tmp_path / "export.csv"
    path.write_bytes("email,name\na@x.com,Jörg\nb@x.com,Zoë “Z”\n".encode("cp1252"))
    load = load_recipients(path, encoding="cp1252")
    assert load.rejects.num_rows == 0
    assert load.table.column("name").to_pylist() == ["Jörg", "Zoë “Z”"]
