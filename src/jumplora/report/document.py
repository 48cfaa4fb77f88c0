"""The report as a list of blocks, written out as Markdown and as one self-contained HTML page.

Both outputs come from the same blocks, so they never disagree. The HTML embeds each PNG as a base64
``data:`` URI and carries its CSS inline: it opens offline, from anywhere, with no script.
"""

from __future__ import annotations

import base64
import html
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Heading:
    text: str
    level: int = 2


@dataclass(frozen=True)
class Paragraph:
    text: str


@dataclass(frozen=True)
class Table:
    header: list[str]
    rows: list[list[str]]
    caption: str
    text_columns: int = 1  # leading columns of names, aligned left; the numbers after them align right


@dataclass(frozen=True)
class Figure:
    filename: str  # a PNG in the report folder
    caption: str


Block = Heading | Paragraph | Table | Figure

CSS = """
body { font-family: system-ui, sans-serif; max-width: 60rem; margin: 2rem auto; padding: 0 1rem; color: #222; }
table { border-collapse: collapse; margin: 0.5rem 0 0.3rem; font-variant-numeric: tabular-nums; }
th, td { border: 1px solid #bbb; padding: 0.25rem 0.6rem; text-align: right; }
.text { text-align: left; }
th { background: #eee; }
figure { margin: 1rem 0 1.5rem; }
img { max-width: 100%; height: auto; border: 1px solid #ddd; }
.caption, figcaption { color: #555; font-size: 0.92rem; margin-bottom: 1rem; }
"""


def to_markdown(blocks: list[Block]) -> str:
    parts = []
    for block in blocks:
        if isinstance(block, Heading):
            parts.append(f"{'#' * block.level} {block.text}")
        elif isinstance(block, Paragraph):
            parts.append(block.text)
        elif isinstance(block, Table):
            lines = [_md_row(block.header), _md_row(["---"] * len(block.header))]
            lines += [_md_row(row) for row in block.rows]
            parts.append("\n".join(lines) + f"\n\n*{block.caption}*")
        else:
            parts.append(f"![{block.filename}]({block.filename})\n\n*{block.caption}*")
    return "\n\n".join(parts) + "\n"


def to_html(blocks: list[Block], folder: Path, title: str) -> str:
    """The page; figures are read from ``folder`` and embedded."""
    body = []
    for block in blocks:
        if isinstance(block, Heading):
            body.append(f"<h{block.level}>{html.escape(block.text)}</h{block.level}>")
        elif isinstance(block, Paragraph):
            body.append(f"<p>{html.escape(block.text)}</p>")
        elif isinstance(block, Table):
            head = _html_row(block.header, "th", block.text_columns)
            rows = "".join(_html_row(row, "td", block.text_columns) for row in block.rows)
            body.append(f"<table><thead>{head}</thead><tbody>{rows}</tbody></table>"
                        f"<p class=\"caption\">{html.escape(block.caption)}</p>")
        else:
            data = base64.b64encode((folder / block.filename).read_bytes()).decode("ascii")
            body.append(f"<figure><img src=\"data:image/png;base64,{data}\" alt=\"{html.escape(block.filename)}\">"
                        f"<figcaption>{html.escape(block.caption)}</figcaption></figure>")
    return (f"<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>{html.escape(title)}</title>"
            f"<style>{CSS}</style></head><body>\n" + "\n".join(body) + "\n</body></html>\n")


def _html_row(cells: list[str], tag: str, text_columns: int) -> str:
    aligned = [' class="text"' if k < text_columns else "" for k in range(len(cells))]
    return "<tr>" + "".join(f"<{tag}{a}>{html.escape(c)}</{tag}>" for a, c in zip(aligned, cells)) + "</tr>"


def _md_row(cells: list[str]) -> str:
    return "| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |"
