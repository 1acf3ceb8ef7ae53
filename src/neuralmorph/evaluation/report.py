"""A self-contained HTML report: one file with inline CSS, PNGs as data URIs and SVG charts inline.

It opens offline from any folder and can be mailed or attached as is. Every piece of text handed in is
HTML-escaped; `add_text` then understands a small, safe subset of Markdown (paragraphs, `- ` lists,
**bold**, *italic*, `code`, and [links](https://...)), so no caller can inject markup by accident.
"""

from __future__ import annotations

import base64
import html
import json
import math
import os
import re
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Sequence

import numpy as np

from ..atomic import atomic_file
from ..errors import InputError

_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"

_CSS = """
:root { --fg: #1f2328; --muted: #57606a; --line: #d8dee4; --soft: #f6f8fa; --accent: #2f6db5; }
* { box-sizing: border-box; }
body { margin: 0; color: var(--fg); background: #fff; line-height: 1.5;
       font: 15px/1.5 system-ui, -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; }
main { max-width: 1120px; margin: 0 auto; padding: 28px 24px 48px; }
h1 { font-size: 26px; margin: 0 0 4px; letter-spacing: -0.01em; }
h2 { font-size: 18px; margin: 34px 0 10px; padding-bottom: 6px; border-bottom: 1px solid var(--line); }
p, ul { margin: 8px 0; max-width: 78ch; }
a { color: var(--accent); }
code { font: 13px ui-monospace, SFMono-Regular, Menlo, Consolas, monospace; background: var(--soft);
       padding: 1px 4px; border-radius: 4px; }
nav { font-size: 13px; color: var(--muted); margin: 6px 0 0; }
nav a { color: var(--muted); margin-right: 14px; text-decoration: none; white-space: nowrap; }
nav a:hover { color: var(--accent); }
.table-wrap { overflow-x: auto; }
table { border-collapse: collapse; font-size: 14px; font-variant-numeric: tabular-nums; }
th, td { padding: 6px 12px; border-bottom: 1px solid var(--line); text-align: left; white-space: nowrap; }
th { background: var(--soft); font-weight: 600; }
td.num, th.num { text-align: right; }
tbody tr:hover { background: #fbfcfd; }
.grid { display: grid; grid-template-columns: repeat(auto-fill, minmax(260px, 1fr)); gap: 16px; }
figure { margin: 0; border: 1px solid var(--line); border-radius: 8px; padding: 8px; background: #fff; }
figure.wide { grid-column: 1 / -1; }
figure img { display: block; width: 100%; height: auto; }
figure.wide img { width: auto; max-width: 100%; margin: 0 auto; }
figcaption { font-size: 13px; color: var(--muted); margin-top: 6px; text-align: center; }
.svg svg { max-width: 100%; height: auto; }
details { border: 1px solid var(--line); border-radius: 8px; padding: 6px 12px; background: var(--soft); }
summary { cursor: pointer; font-weight: 600; }
pre { font: 12.5px/1.45 ui-monospace, SFMono-Regular, Menlo, Consolas, monospace; overflow-x: auto;
      margin: 8px 0 4px; }
footer { margin-top: 40px; font-size: 12px; color: var(--muted); }
""".strip()


def _esc(text) -> str:
    return html.escape(str(text), quote=True)


# inline Markdown applied to already-escaped text, so the patterns never see raw "<" or "&"
_INLINE = [
    (re.compile(r"`([^`]+)`"), r"<code>\1</code>"),
    (re.compile(r"\*\*(.+?)\*\*"), r"<strong>\1</strong>"),
    (re.compile(r"(?<![\w*])\*(?!\s)(.+?)(?<!\s)\*(?![\w*])"), r"<em>\1</em>"),
    # only http(s) targets: a "javascript:" URL must stay text
    (re.compile(r"\[([^\]]+)\]\((https?://[^\s)]+)\)"), r'<a href="\2">\1</a>'),
]


def _inline(escaped: str) -> str:
    # code spans are protected from the other patterns by swapping them out first
    codes: list[str] = []

    def stash(m: re.Match) -> str:
        codes.append(m.group(1))
        return f"\x00{len(codes) - 1}\x00"

    s = _INLINE[0][0].sub(stash, escaped)
    for pattern, repl in _INLINE[1:]:
        s = pattern.sub(repl, s)
    return re.sub(r"\x00(\d+)\x00", lambda m: f"<code>{codes[int(m.group(1))]}</code>", s)


def markdownish(text: str) -> str:
    """Escape `text`, then render blank-line separated paragraphs and `- ` bullet lists as HTML."""
    blocks = re.split(r"\n\s*\n", str(text).strip())
    out = []
    for block in blocks:
        lines = [ln.strip() for ln in block.splitlines() if ln.strip()]
        if not lines:
            continue
        if all(ln.startswith(("- ", "* ")) for ln in lines):
            items = "".join(f"<li>{_inline(_esc(ln[2:]))}</li>" for ln in lines)
            out.append(f"<ul>{items}</ul>")
        else:
            out.append(f"<p>{_inline(_esc(' '.join(lines)))}</p>")
    return "\n".join(out)


def _png_data_uri(image) -> tuple[str, int, int]:
    """A data: URI for an (H, W[, 3|4]) uint8 image or the path of a PNG file, and its width and height."""
    if isinstance(image, (str, os.PathLike)):
        path = Path(image)
        try:
            data = path.read_bytes()
        except OSError as e:
            raise InputError(path, f"cannot read image ({e.__class__.__name__})") from None
        if not data.startswith(_PNG_MAGIC):
            raise InputError(path, "not a PNG file")
    else:
        from ..render import png_bytes

        data = png_bytes(np.asarray(image))
    # width and height are the first fields of the IHDR chunk, right after the signature
    width, height = int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    return "data:image/png;base64," + base64.b64encode(data).decode("ascii"), width, height


def _check_svg(svg: str) -> str:
    """The SVG markup without an XML declaration; refuses malformed SVG and anything scriptable."""
    body = re.sub(r"^\s*<\?xml[^>]*\?>\s*", "", str(svg))
    try:
        root = ET.fromstring(body)
    except ET.ParseError as e:
        raise ValueError(f"not well-formed SVG: {e}") from None
    if root.tag.rsplit("}", 1)[-1] != "svg":
        raise ValueError(f"expected an <svg> root element, got <{root.tag}>")
    for el in root.iter():
        tag = el.tag.rsplit("}", 1)[-1].lower() if isinstance(el.tag, str) else ""
        if tag in ("script", "foreignobject"):
            raise ValueError(f"SVG must not contain <{tag}>")
        for name, value in el.attrib.items():
            local = name.rsplit("}", 1)[-1].lower()
            if local.startswith("on") or (local == "href" and value.strip().lower().startswith("javascript:")):
                raise ValueError(f"SVG must not contain scriptable attribute {local!r}")
    return body


def _cell(value, fmt: str) -> tuple[str, bool]:
    """(escaped cell text, is it numeric) for a table value."""
    if value is None:
        return "", False
    if isinstance(value, (bool, np.bool_)):
        return _esc(str(bool(value))), False
    if isinstance(value, (int, np.integer)):
        return _esc(f"{int(value):d}"), True
    if isinstance(value, (float, np.floating)):
        v = float(value)
        return ("\u2014" if math.isnan(v) else _esc(fmt.format(v))), True
    return _esc(value), False


def _json_clean(x):
    """JSON-safe copy: NaN/inf -> null, numpy scalars and arrays -> Python numbers and lists."""
    if isinstance(x, dict):
        return {str(k): _json_clean(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_json_clean(v) for v in x]
    if isinstance(x, np.ndarray):
        return _json_clean(x.tolist())
    if isinstance(x, np.generic):
        x = x.item()
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, (str, int, float, bool)) or x is None:
        return x
    return str(x)  # paths, enums, ...: their text


class Report:
    """Builder for one self-contained HTML page; sections appear in the order they are added.

    >>> r = Report("Fit of subject 3"); r.add_text("Fitted **PCA** model."); r.write("report.html")
    """

    def __init__(self, title: str):
        self.title = str(title)
        self._sections: list[tuple[str | None, str]] = []  # (heading or None, HTML body)

    def _add(self, title: str | None, body: str) -> "Report":
        self._sections.append((None if title is None else str(title), body))
        return self

    def add_text(self, text: str, title: str | None = None) -> "Report":
        """A paragraph (or several, and `- ` lists); text is escaped, then light Markdown is applied."""
        return self._add(title, markdownish(text))

    def add_metrics_table(self, title: str, rows: Sequence[dict], columns: Sequence[str] | None = None,
                          fmt: str = "{:.3f}") -> "Report":
        """A table, one row per dict (column -> str | int | float); floats through `fmt`, NaN as a dash.

        columns: the columns in order; None for every key in order of first appearance.
        """
        if columns is None:
            columns = list(dict.fromkeys(k for row in rows for k in row))
        cells = [[_cell(row.get(c), fmt) for c in columns] for row in rows]
        numeric = [bool(cells) and all(cells[r][j][1] or cells[r][j][0] == "" for r in range(len(cells)))
                   for j in range(len(columns))]
        cls = [' class="num"' if n else "" for n in numeric]
        head = "".join(f"<th{cls[j]}>{_esc(c)}</th>" for j, c in enumerate(columns))
        body = "".join("<tr>" + "".join(f"<td{cls[j]}>{text}</td>" for j, (text, _) in enumerate(r)) + "</tr>"
                       for r in cells)
        return self._add(title, f'<div class="table-wrap"><table><thead><tr>{head}</tr></thead>'
                                f"<tbody>{body}</tbody></table></div>")

    def add_images(self, title: str, items: Sequence[tuple[str, object]]) -> "Report":
        """A responsive grid of captioned images: (caption, (H, W[, 3|4]) uint8 array or PNG path).

        Images much wider than tall (view strips) take a whole row.
        """
        figs = []
        for caption, image in items:
            uri, w, h = _png_data_uri(image)
            # strips of several views would shrink to illegibility in one grid cell: give them the row
            wide = ' class="wide"' if w > 1.6 * h else ""
            figs.append(f'<figure{wide}><img src="{uri}" alt="{_esc(caption)}" width="{w}" height="{h}">'
                        f"<figcaption>{_esc(caption)}</figcaption></figure>")
        return self._add(title, f'<div class="grid">{"".join(figs)}</div>')

    def add_svg(self, title: str, svg: str) -> "Report":
        """An inline SVG figure (e.g. from `line_plot_svg`); scripts and event handlers are refused."""
        return self._add(title, f'<div class="svg">{_check_svg(svg)}</div>')

    def add_json(self, title: str, obj) -> "Report":
        """`obj` as pretty JSON in a collapsed <details> block (NaN/inf shown as null)."""
        text = json.dumps(_json_clean(obj), indent=2, ensure_ascii=False, allow_nan=False)
        pre = html.escape(text, quote=False)
        return self._add(None, f"<details><summary>{_esc(title)}</summary><pre>{pre}</pre></details>")

    def to_html(self) -> str:
        """The whole page as a string."""
        body, nav = [], []
        for i, (title, content) in enumerate(self._sections):
            if title is not None:
                anchor = f"s{i}"
                body.append(f'<section id="{anchor}"><h2>{_esc(title)}</h2>\n{content}</section>')
                nav.append(f'<a href="#{anchor}">{_esc(title)}</a>')
            else:
                body.append(f"<section>{content}</section>")
        from .. import __version__

        nav_html = f"<nav>{''.join(nav)}</nav>" if len(nav) >= 3 else ""
        return (
            "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
            "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n"
            f"<title>{_esc(self.title)}</title>\n<style>\n{_CSS}\n</style>\n</head>\n<body>\n<main>\n"
            f"<header><h1>{_esc(self.title)}</h1>{nav_html}</header>\n"
            + "\n".join(body)
            + f"\n<footer>Made with neuralmorph {_esc(__version__)}.</footer>\n</main>\n</body>\n</html>\n"
        )

    def write(self, path: str | os.PathLike) -> Path:
        """Write the page to `path` (UTF-8), atomically; returns the path."""
        page = self.to_html()
        with atomic_file(path) as tmp:
            tmp.write_text(page, encoding="utf-8")
        return Path(path)
