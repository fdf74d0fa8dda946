"""Build the generated returns corpus: real MTA bounces and provider formats, with labels.

    python tests/returns/corpus/build.py OUT [--real] [--written] [--seed N]

``--fresh`` renders held-out split 2 (fresh_formats.py, never tuned on) into ``OUT/fresh``.
``--real`` runs a private Postfix and a private Exim (root; see mta.py) and writes their
bounces plus labels to ``OUT/postfix`` and ``OUT/exim``; ``--written`` renders the provider
and MTA formats in formats.py into ``OUT/written``. Each folder gets a ``labels.jsonl``
(see cases.Label). The real-MTA part is committed compressed under tests/data/returns/
generated/ (so tests need no root); the written part is regenerated whenever needed.
"""

from __future__ import annotations

import argparse
import collections
import sys
import tarfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from cases import Label, read_labels, write_labels  # noqa: E402

REAL_ARCHIVE = HERE.parents[1] / "data" / "returns" / "generated" / "real-mta.tar.xz"


def build_real(out: Path, cache: Path) -> list[Label]:
    import mta

    labels = mta.run_postfix(out / "postfix")
    write_labels(out / "postfix", labels)
    exim = mta.run_exim(out / "exim", cache)
    write_labels(out / "exim", exim)
    return labels + exim


def build_written(out: Path, seed: int = 1) -> list[Label]:
    import formats

    labels = formats.render_all(out / "written", seed)
    write_labels(out / "written", labels)
    return labels


def build_fresh(out: Path, seed: int = 2) -> list[Label]:
    import fresh_formats

    labels = fresh_formats.render_fresh(out / "fresh", seed)
    write_labels(out / "fresh", labels)
    return labels


def build_extra(out: Path) -> list[Label]:
    import tuned_extra

    labels = tuned_extra.render_extra(out / "extra") + tuned_extra.render_hidden(out / "extra")
    write_labels(out / "extra", labels)
    return labels


def written_stamp() -> int:
    """Changes whenever a written part's source changes (the cache is then rendered again)."""
    names = (
        "formats.py",
        "replies.py",
        "fresh_formats.py",
        "fresh_replies.py",
        "cases.py",
        "tuned_extra.py",
    )
    return sum((HERE / name).stat().st_mtime_ns for name in names) % 10**12


def pack_real(out: Path, archive: Path = REAL_ARCHIVE) -> None:
    """The real-MTA folders as one small committed archive."""
    archive.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(archive, "w:xz") as tar:
        for name in ("postfix", "exim"):
            tar.add(out / name, arcname=name)


def unpack_real(out: Path, archive: Path = REAL_ARCHIVE) -> list[Path]:
    """Unpack the committed real-MTA bounces into ``out``; the folders unpacked."""
    with tarfile.open(archive) as tar:
        tar.extractall(out, filter="data")
    return [out / name for name in ("postfix", "exim")]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--real", action="store_true")
    parser.add_argument("--pack", action="store_true", help="write the committed archive")
    parser.add_argument("--written", action="store_true")
    parser.add_argument("--fresh", action="store_true", help="held-out split 2")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--cache", type=Path, default=Path("/tmp/raymail-corpus-cache"))
    args = parser.parse_args()
    labels: list[Label] = []
    if args.real:
        labels += build_real(args.out, args.cache)
        if args.pack:
            pack_real(args.out)
    if args.written:
        labels += build_written(args.out, args.seed)
    if args.fresh:
        labels += build_fresh(args.out)
        labels += build_extra(args.out)
    if not labels:
        for folder in sorted(p for p in args.out.iterdir() if (p / "labels.jsonl").exists()):
            labels += read_labels(folder)
    counts = collections.Counter((label.source, label.split) for label in labels)
    print({f"{s}/{t}": n for (s, t), n in sorted(counts.items())}, len(labels))
    print("formats:", len({label.format for label in labels}))


if __name__ == "__main__":
    main()
