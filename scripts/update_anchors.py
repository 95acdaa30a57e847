"""Re-point the code links of a doc to where the functions they name are defined now.

    python scripts/update_anchors.py docs/walkthrough.md

A link such as [`AutoencoderKL.encode`](../ldm/vae.py#L425-L432) names a function (or Class.method) in backticks;
this rewrites its #Lfirst-Llast to the current first and last line of that definition, and fails naming the link
when the name is no longer defined in the file. tests/test_walkthrough.py checks that the anchors are current.
"""
from __future__ import annotations

import argparse
import ast
import re
import sys
from pathlib import Path

LINK = re.compile(r"\[(?P<text>[^\]]*`(?P<name>[\w.]+)[^\]]*)\]\((?P<target>[^)#\s]+\.py)#L(\d+)-L(\d+)\)")


def definitions(source: str) -> dict[str, tuple[int, int]]:
    """'name' and 'Class.name' -> (first line, last line) of every function and class definition."""
    found = {}

    def visit(node, prefix: str):
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.ClassDef)):
                qualified = prefix + child.name
                found[qualified] = (child.lineno, child.end_lineno)
                found.setdefault(child.name, (child.lineno, child.end_lineno))
                visit(child, qualified + ".")

    visit(ast.parse(source), "")
    return found


def update(doc: Path) -> int:
    """Rewrite doc's anchors in place; returns how many changed."""
    text = doc.read_text(encoding="utf-8")
    changed = 0

    def replace(match: re.Match) -> str:
        nonlocal changed
        path = (doc.parent / match["target"]).resolve()
        found = definitions(path.read_text(encoding="utf-8"))
        if match["name"] not in found:
            raise SystemExit(f"error: {doc}: {match['name']} is not defined in {match['target']} any more")
        first, last = found[match["name"]]
        new = f"[{match['text']}]({match['target']}#L{first}-L{last})"
        changed += new != match[0]
        return new

    text = LINK.sub(replace, text)
    doc.write_text(text, encoding="utf-8")
    return changed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("docs", nargs="+", type=Path, help="Markdown files whose code links to update")
    for doc in parser.parse_args(argv).docs:
        print(f"{doc}: {update(doc)} anchor(s) updated")
    return 0


if __name__ == "__main__":
    sys.exit(main())
