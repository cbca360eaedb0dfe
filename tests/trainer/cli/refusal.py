"""The check every argument test makes: a command run in-process refused cleanly and wrote nothing.

A plain module, not a conftest.py: test modules elsewhere import names from `conftest`, which must stay the
root one (conftest files without __init__.py share that module name).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from trainer.cli import main

NOT_A_FILE = ("missing", "folder")  # the kinds not_a_file makes


def snapshot(root: Path) -> dict[str, bytes]:
    """Every file under `root` (relative path -> bytes); empty when `root` does not exist."""
    return {str(path.relative_to(root)): path.read_bytes() for path in sorted(root.rglob("*")) if path.is_file()}


def refused(capsys: pytest.CaptureFixture[str], argv: list[object], named: str, untouched: list[Path]) -> str:
    """Run `unmix-swav argv`, assert a clean refusal and return its line.

    Clean: exit code 2, exactly one `error:` line on stderr, no traceback, `named` (the flag or file) in the
    line, and not a byte written, changed or removed under each path of `untouched` (one that did not exist
    is still absent).
    """
    before = [(path.exists(), snapshot(path)) for path in untouched]
    code = main([str(part) for part in argv])
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert code == 2, err
    assert len(errors) == 1, err
    assert "Traceback" not in err
    assert named in errors[0], errors[0]
    assert [(path.exists(), snapshot(path)) for path in untouched] == before
    return errors[0]


def not_a_file(path: Path, kind: str) -> str:
    """Make `path` a folder (kind "folder") or leave it missing ("missing"); the words its refusal must say."""
    if kind == "folder":
        path.mkdir()
        return "is a folder"
    return "does not exist"
