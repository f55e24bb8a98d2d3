"""Rendering a report's blocks: Markdown beside its PNG plots, and one self-contained HTML page.

A report is a list of blocks, ``("h1"|"h2"|"h3", text)``, ``("p", text)``, ``("pre", text)``,
``("table", header, rows)`` and ``("img", plot name, caption)``; plots are PNG bytes by name. The HTML
carries its plots inline (data URIs) and no script or remote resource, so it opens offline.
"""

from __future__ import annotations

import base64
import html
import io

NOT_MEASURED = "not measured"
PLOTS_DIR = "report-plots"


def png_bytes(figure) -> bytes:
    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=90)
    plt.close(figure)
    return buffer.getvalue()


def render_markdown(blocks: list[tuple], plots: dict[str, bytes]) -> str:
    lines: list[str] = []
    for block in blocks:
        kind = block[0]
        if kind in ("h1", "h2", "h3"):
            lines += ["#" * int(kind[1]) + " " + block[1], ""]
        elif kind == "p":
            lines += [block[1], ""]
        elif kind == "pre":
            lines += ["```", block[1], "```", ""]
        elif kind == "table":
            header, rows = block[1], block[2]
            lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
            lines += ["| " + " | ".join(str(c).replace("|", "\\|") for c in row) + " |" for row in rows] + [
                ""
            ]
        elif kind == "img" and block[1] in plots:
            lines += [f"![{block[2]}]({PLOTS_DIR}/{block[1]}.png)", ""]
    return "\n".join(lines)


_STYLE = """body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;margin:.5em 0 1em}td,th{border:1px solid #ccc;padding:.25em .6em;text-align:left}
th{background:#f2f2f2}pre{background:#f6f6f6;padding:.6em;overflow-x:auto}img{max-width:100%}
.nm{color:#a33}"""


def render_html(blocks: list[tuple], plots: dict[str, bytes], *, title: str) -> str:
    parts = [f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>{html.escape(title)}</title>",
             f"<style>{_STYLE}</style></head><body>"]  # fmt: skip
    for block in blocks:
        kind = block[0]
        if kind in ("h1", "h2", "h3"):
            parts.append(f"<{kind}>{html.escape(block[1])}</{kind}>")
        elif kind == "p":
            parts.append(f"<p>{_mark(block[1])}</p>")
        elif kind == "pre":
            parts.append(f"<pre>{html.escape(block[1])}</pre>")
        elif kind == "table":
            head = "".join(f"<th>{html.escape(str(c))}</th>" for c in block[1])
            body = "".join(
                "<tr>" + "".join(f"<td>{_mark(str(c))}</td>" for c in row) + "</tr>" for row in block[2]
            )
            head = f"<thead><tr>{head}</tr></thead>" if any(block[1]) else ""  # a key-value table has none
            parts.append(f"<table>{head}<tbody>{body}</tbody></table>")
        elif kind == "img" and block[1] in plots:
            data = base64.b64encode(plots[block[1]]).decode()
            parts.append(f"<figure><img id='plot-{block[1]}' alt='{html.escape(block[2])}' "
                         f"src='data:image/png;base64,{data}'><figcaption>{html.escape(block[2])}</figcaption></figure>")  # fmt: skip
    parts.append("</body></html>")
    return "\n".join(parts)


def _mark(text: str) -> str:
    """Escaped text, `code` spans as code, and "not measured" shown as such."""
    import re

    escaped = re.sub(r"`([^`]+)`", r"<code>\1</code>", html.escape(text))
    return escaped.replace(NOT_MEASURED, f"<span class='nm'>{NOT_MEASURED}</span>")
