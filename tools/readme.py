"""Write README.md from nbs/index.ipynb: markdown cells as they are, code cells as fenced Python."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import nbformat

HEADER = "<!-- Generated from nbs/index.ipynb by `make readme`: edit the notebook, not this file. -->\n\n"


def render_readme(notebook: Path) -> str:
    """Return the README text for the index notebook."""
    cells = nbformat.read(notebook, as_version=4).cells
    parts = []
    for cell in cells:
        source = cell.source.strip()
        if not source or source.startswith("#| hide"):
            continue
        if cell.cell_type == "markdown":
            # Image paths in the notebook are relative to nbs/; the README sits one folder up.
            parts.append(source.replace("](images/", "](nbs/images/"))
        else:
            parts.append(f"```python\n{source}\n```")
    return HEADER + "\n\n".join(parts) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--root", type=Path, default=Path(__file__).resolve().parents[1])
    parser.add_argument("--check", action="store_true", help="exit with 1 when README.md is out of date")
    args = parser.parse_args(argv)
    text = render_readme(args.root / "nbs" / "index.ipynb")
    readme = args.root / "README.md"
    if args.check:
        if not readme.is_file() or readme.read_text(encoding="utf-8") != text:
            print("README.md differs from nbs/index.ipynb: run `make readme` and commit README.md.", file=sys.stderr)
            return 1
        return 0
    readme.write_text(text, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
