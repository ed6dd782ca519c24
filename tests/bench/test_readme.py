"""README.md carries the latest generated tables (bench/readme.py copies them from bench/results)."""

from __future__ import annotations

import pytest

from bench import readme


def test_readme_tables_are_the_generated_ones():
    current = readme.README.read_text()
    assert readme.BLOCK.search(current), "README.md has no generated blocks"
    assert readme.render(current) == current, (
        "run `python -m bench.readme` to copy bench/results into README.md"
    )


def test_a_block_takes_its_section_body(tmp_path):
    (tmp_path / "r.md").write_text("# Title\n\nintro\n\n## A\n\n| x |\n|---|\n| 1 |\n\n## B\n\nb\n")
    text = "before\n<!-- generated: r.md#A -->\nold\n<!-- end generated -->\nafter\n"
    assert readme.render(text, tmp_path) == (
        "before\n<!-- generated: r.md#A -->\n| x |\n|---|\n| 1 |\n<!-- end generated -->\nafter\n"
    )
    whole = "<!-- generated: r.md#* -->\n<!-- end generated -->"
    assert readme.render(whole, tmp_path).startswith("<!-- generated: r.md#* -->\nintro\n\n## A")
    with pytest.raises(SystemExit, match="no section"):
        readme.render("<!-- generated: r.md#C -->\n<!-- end generated -->", tmp_path)
