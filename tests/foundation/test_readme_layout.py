"""The README's layout table matches the tree: every top-level folder and every package folder of
powerctl/ and sim/ has its row, and every row names a folder that exists."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _table_paths() -> set[str]:
    text = (ROOT / "README.md").read_text()
    start = text.index("### Folders\n")
    rows = text[start:].split("\n\n", 2)[1]
    return {m.group(1).rstrip("/") for m in re.finditer(r"^\| `([^`]+)` \|", rows, re.M)}


def _tree_folders() -> set[str]:
    files = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard"],
        capture_output=True, text=True, cwd=ROOT, check=True,
    ).stdout.split()
    folders: set[str] = set()
    for f in files:
        parts = f.split("/")
        if not (ROOT / f).exists() or len(parts) < 2:
            continue  # deleted in the worktree, or a top-level file
        folders.add(parts[0])
        if parts[0] in ("powerctl", "sim") and len(parts) > 2 and not (ROOT / parts[0] / parts[1]).is_symlink():
            folders.add(f"{parts[0]}/{parts[1]}")
    return folders


def test_layout_table_matches_the_tree() -> None:
    table, tree = _table_paths(), _tree_folders()
    assert sorted(tree - table) == [], "folders without a row in README.md's layout table"
    assert sorted(p for p in table if not (ROOT / p).is_dir()) == [], "rows naming no folder"
