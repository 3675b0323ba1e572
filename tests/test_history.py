"""History lives in commit messages, CHANGELOG.md and docs/FIDELITY.md, not in the code: no issue numbers or commit
hashes in the package, the workflow, the configs, the tests or the notebooks."""

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
WHERE = ["src", "workflow", "tests", "notebooks", "benchmarks", "profiles", "envs/lock.py", "Snakefile", "Makefile",
         "pyproject.toml", "config.yaml", "config.quick.yaml", ".test/config.yaml"]
ISSUE = re.compile(r"\b[Ii]ssues? ?#?\d+|(?<![\w#&])#\d{1,4}\b")
# an abbreviated (7-12) or full (40) commit hash: hex with at least one digit and one letter
COMMIT = re.compile(r"(?<![.\w])(?=[0-9a-f]*[a-f])(?=[0-9a-f]*\d)(?:[0-9a-f]{7,12}|[0-9a-f]{40})\b")


def _files():
    for name in WHERE:
        path = REPO / name
        yield from (sorted(p for p in path.rglob("*") if p.is_file() and "__pycache__" not in p.parts)
                    if path.is_dir() else [path])


def _hits(text: str) -> list[str]:
    return [m.group(0) for pattern in (ISSUE, COMMIT) for m in pattern.finditer(text)]


def test_no_issue_numbers_or_commit_hashes_in_code():
    found = {}
    for path in _files():
        if path == Path(__file__):
            continue
        try:
            hits = _hits(path.read_text())
        except UnicodeDecodeError:
            continue
        if hits:
            found[str(path.relative_to(REPO))] = hits
    assert not found, found


def test_the_patterns_catch_what_they_should():
    assert _hits("a fix (issue 14) at 276b0e8, see #6") == ["issue 14", "#6", "276b0e8"]
    assert _hits("md5 c99cafc152244af753f735de768cd75f, colour #1f77b4, &#124;, 0.0123456789, 1.23456789e-4, deadbeef") == []
