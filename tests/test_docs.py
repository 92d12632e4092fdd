"""The README's Python runs as written, and the docs read as user documentation."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
# numbering and tools of the work that made the project, which mean nothing to a user
WORKING_NOTES = re.compile(r"[Ss]ession \d|[Ii]ssue \d|[Cc]ycle \d|lent GPU|\blease\b|\blent\b|give_back|device call")


def python_blocks(text: str) -> list[str]:
    return re.findall(r"^```python\n(.*?)^```", text, flags=re.S | re.M)


def test_every_python_block_of_the_readme_runs(tmp_path, monkeypatch):
    """In order, in one namespace (later blocks use what earlier ones made), in an empty folder."""
    monkeypatch.chdir(tmp_path)
    blocks = python_blocks(README.read_text())
    assert len(blocks) >= 5
    namespace: dict = {}
    for number, block in enumerate(blocks, 1):
        exec(compile(block, f"README.md, Python block {number}", "exec"), namespace)  # noqa: S102


def test_no_working_notes_in_the_readme_and_docs():
    files = [README, *sorted((ROOT / "docs").rglob("*.md"))]
    found = [f"{path.relative_to(ROOT)}:{number}: {line.strip()}" for path in files
             for number, line in enumerate(path.read_text().splitlines(), 1) if WORKING_NOTES.search(line)]
    assert not found, "\n".join(found)


def test_the_package_allows_current_torch():
    import tomllib

    from packaging.requirements import Requirement

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    torch = next(Requirement(r) for r in project["dependencies"] if r.startswith("torch"))
    assert torch.specifier.contains("2.15.0") and torch.specifier.contains("2.13.0")
