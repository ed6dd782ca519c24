"""README.md shows the latest generated tables: each block between

    <!-- generated: bench/results/<file>.md#<section heading> -->
    ...
    <!-- end generated -->

is the body of that section of that results file (bench/results holds every generated table, once).

    python -m bench.readme           # rewrite the blocks from bench/results
    python -m bench.readme --check   # exit 1 when README.md is not up to date
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
BLOCK = re.compile(
    r"(?P<open><!-- generated: (?P<file>[^#\s]+)#(?P<section>[^>]+?) -->\n)(?P<body>.*?)(?P<close><!-- end generated -->)",
    re.S,
)


def section(markdown: str, heading: str) -> str:
    """The body of the `## heading` section (up to the next heading of level 1 or 2), stripped;
    heading "*": everything under the file's title."""
    lines = markdown.splitlines()
    want = "# " if heading == "*" else f"## {heading}"
    start = next(
        (
            i
            for i, line in enumerate(lines)
            if line.strip().startswith(want) and (heading == "*" or line.strip() == want)
        ),
        None,
    )
    if start is None:
        raise KeyError(f"no section '## {heading}'")
    body: list[str] = []
    for line in lines[start + 1 :]:
        if re.match(r"#{1,2} ", line) and heading != "*":
            break
        body.append(line)
    return "\n".join(body).strip()


def render(readme: str, root: Path = ROOT) -> str:
    """README text with every generated block replaced by its section's current body."""

    def fill(m: re.Match) -> str:
        source = (root / m["file"]).read_text()
        try:
            body = section(source, m["section"].strip())
        except KeyError as e:
            raise SystemExit(f"README block {m['file']}#{m['section']}: {e.args[0]}") from None
        return f"{m['open']}{body}\n{m['close']}"

    return BLOCK.sub(fill, readme)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.readme", description=__doc__.split("\n\n")[0])
    p.add_argument("--check", action="store_true", help="exit 1 if README.md is not up to date")
    args = p.parse_args(argv)
    current = README.read_text()
    fresh = render(current)
    if args.check:
        if fresh != current:
            print(
                "README.md: generated tables are out of date; run `python -m bench.readme`", file=sys.stderr
            )
            return 1
        return 0
    if fresh != current:
        README.write_text(fresh)
        print("README.md: generated tables updated")
    return 0


if __name__ == "__main__":
    sys.exit(main())
