"""A small document model rendered twice: Markdown for a README or PR, and one self-contained HTML page.

Text is written once in a tiny Markdown subset (``**bold**``, ``*italic*``, ```code```) so that both
renderings say the same thing.
"""

from __future__ import annotations

import base64
import html
import re
from dataclasses import dataclass, field


@dataclass
class Table:
    columns: list[str]
    rows: list[list[str]]
    align: str = ""  # one of "l" / "r" per column; missing ones are "l"

    def _align(self, i: int) -> str:
        return self.align[i] if i < len(self.align) else "l"


@dataclass
class Image:
    filename: str
    alt: str
    png: bytes


@dataclass
class Bullets:
    items: list[str]


Block = str | Table | Image | Bullets


@dataclass
class Section:
    title: str
    blocks: list[Block] = field(default_factory=list)


@dataclass
class Document:
    title: str
    intro: list[Block]
    sections: list[Section]


# ---- Markdown ----------------------------------------------------------------------------------------------


def to_markdown(doc: Document) -> str:
    out = [f"# {doc.title}", ""]
    out += _md_blocks(doc.intro)
    for section in doc.sections:
        out += [f"## {section.title}", ""]
        out += _md_blocks(section.blocks)
    return "\n".join(out).rstrip() + "\n"


def _md_blocks(blocks: list[Block]) -> list[str]:
    out: list[str] = []
    for block in blocks:
        if isinstance(block, Table):
            out += _md_table(block)
        elif isinstance(block, Image):
            out.append(f"![{block.alt}]({block.filename})")
        elif isinstance(block, Bullets):
            out += [f"- {item}" for item in block.items]
        else:
            out.append(block)
        out.append("")
    return out


def _md_cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _md_table(table: Table) -> list[str]:
    rule = [("---:" if table._align(i) == "r" else ":---") for i in range(len(table.columns))]
    lines = ["| " + " | ".join(_md_cell(c) for c in table.columns) + " |", "| " + " | ".join(rule) + " |"]
    lines += ["| " + " | ".join(_md_cell(c) for c in row) + " |" for row in table.rows]
    return lines


# ---- HTML --------------------------------------------------------------------------------------------------

CSS = """
:root { --ink: #1d2330; --muted: #5b6472; --line: #dfe3ea; --band: #f6f8fb; --accent: #2f6fb3; }
* { box-sizing: border-box; }
body { margin: 0; background: #fff; color: var(--ink);
       font: 15px/1.5 system-ui, -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif; }
main { max-width: 1180px; margin: 0 auto; padding: 28px 24px 64px; }
h1 { font-size: 26px; margin: 0 0 12px; }
h2 { font-size: 19px; margin: 36px 0 10px; padding-bottom: 4px; border-bottom: 2px solid var(--line); }
p, li { max-width: 920px; }
code { font: 13px/1.4 ui-monospace, SFMono-Regular, Menlo, Consolas, monospace; background: var(--band);
       padding: 1px 4px; border-radius: 3px; }
.scroll { overflow-x: auto; margin: 10px 0 18px; }
table { border-collapse: collapse; font-size: 13.5px; font-variant-numeric: tabular-nums; }
th, td { padding: 5px 10px; border-bottom: 1px solid var(--line); text-align: left; white-space: nowrap; }
th { background: var(--band); font-weight: 600; border-bottom: 2px solid var(--line); }
td.r, th.r { text-align: right; }
tbody tr:nth-child(even) { background: #fbfcfd; }
tbody tr:hover { background: #eef4fb; }
figure { margin: 14px 0 26px; }
figure img { display: block; max-width: 100%; height: auto; border: 1px solid var(--line); border-radius: 4px; }
figcaption { color: var(--muted); font-size: 13px; margin-top: 4px; }
"""


def _inline(text: str) -> str:
    parts = []
    # Odd pieces are code spans: their stars are literal
    for i, piece in enumerate(re.split(r"`([^`]+)`", text)):
        out = html.escape(piece, quote=False)
        if i % 2:
            parts.append(f"<code>{out}</code>")
            continue
        out = re.sub(r"\*\*(.+?)\*\*", r"<strong>\1</strong>", out)
        parts.append(re.sub(r"(?<![\w*])\*([^*\s][^*]*)\*(?![\w*])", r"<em>\1</em>", out))
    return "".join(parts)


def _html_blocks(blocks: list[Block]) -> list[str]:
    out: list[str] = []
    for block in blocks:
        if isinstance(block, Table):
            out.append(_html_table(block))
        elif isinstance(block, Image):
            data = base64.b64encode(block.png).decode("ascii")
            out.append(
                f'<figure><img src="data:image/png;base64,{data}" alt="{html.escape(block.alt)}">'
                f"<figcaption>{html.escape(block.alt)} (<code>{html.escape(block.filename)}</code>)</figcaption>"
                "</figure>"
            )
        elif isinstance(block, Bullets):
            out.append("<ul>" + "".join(f"<li>{_inline(i)}</li>" for i in block.items) + "</ul>")
        else:
            out.append(f"<p>{_inline(block)}</p>")
    return out


def _html_table(table: Table) -> str:
    def cls(i: int) -> str:
        return ' class="r"' if table._align(i) == "r" else ""

    head = "".join(f"<th{cls(i)}>{_inline(c)}</th>" for i, c in enumerate(table.columns))
    body = "".join(
        "<tr>" + "".join(f"<td{cls(i)}>{_inline(c)}</td>" for i, c in enumerate(row)) + "</tr>" for row in table.rows
    )
    return f'<div class="scroll"><table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></div>'


def _anchor(title: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", title.lower()).strip("-")


def to_html(doc: Document) -> str:
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{html.escape(doc.title)}</title>",
        f"<style>{CSS}</style></head><body><main>",
        f"<h1>{html.escape(doc.title)}</h1>",
    ]
    parts += _html_blocks(doc.intro)
    for section in doc.sections:
        parts.append(f'<section id="{_anchor(section.title)}"><h2>{html.escape(section.title)}</h2>')
        parts += _html_blocks(section.blocks)
        parts.append("</section>")
    parts.append("</main></body></html>")
    return "\n".join(parts) + "\n"
