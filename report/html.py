"""The report page: one self-contained HTML file (every image an inline data URI, no script, no URL).

Reads nothing: it is handed a dict of sections by report/build.py. Writes nothing (build.py writes the file).
Example: python -c "from report.html import page; print(page({'title': 't', 'sections': []})[:60])"
"""
from html import escape

CSS = """
body{font:14px/1.4 system-ui,sans-serif;margin:24px auto;max-width:1280px;padding:0 16px;color:#222}
h1{font-size:22px}h2{font-size:18px;border-bottom:1px solid #ccc;padding-bottom:4px;margin-top:32px}
h3{font-size:15px;margin:16px 0 6px}
table{border-collapse:collapse;margin:6px 0}td,th{border:1px solid #ddd;padding:3px 8px;text-align:left;
vertical-align:top}th{background:#f3f3f3}.num{text-align:right;font-variant-numeric:tabular-nums}
.grid{display:flex;flex-wrap:wrap;gap:8px}.card{width:132px;font-size:11px;border:1px solid #ddd;padding:4px;
overflow-wrap:anywhere}.card img{display:block;width:120px;height:120px;object-fit:contain;background:#eee;
margin:0 auto 3px}.pair{display:flex;gap:4px;border:1px solid #ddd;padding:4px;font-size:11px;width:268px;
flex-wrap:wrap}.pair img{width:120px;height:120px;object-fit:contain;background:#eee}.pair div{width:100%}
.flag{color:#b00;font-weight:600}.note{color:#555}.figs{display:flex;flex-wrap:wrap;gap:12px;align-items:flex-start}
.figs img{max-width:100%;border:1px solid #eee}
"""


def table(rows, header=None, num_cols=()) -> str:
    """An HTML table of `rows` (lists of cells; already-escaped HTML is not expected: every cell is escaped)."""
    out = ["<table>"]
    if header:
        out.append("<tr>" + "".join(f"<th>{escape(str(h))}</th>" for h in header) + "</tr>")
    for r in rows:
        out.append("<tr>" + "".join(f"<td class=\"num\">{escape(str(c))}</td>" if i in num_cols else
                                    f"<td>{escape(str(c))}</td>" for i, c in enumerate(r)) + "</tr>")
    return "".join(out) + "</table>"


def img(uri, alt, width=None, height=None) -> str:
    size = (f' width="{width}"' if width else "") + (f' height="{height}"' if height else "")
    return f'<img src="{uri}" alt="{escape(alt)}"{size}>'


def card(uri, path, lines, flag=False) -> str:
    """One thumbnail with its path and a few lines of text under it."""
    text = "<br>".join(escape(str(l)) for l in lines)
    return (f'<div class="card">{img(uri, path, 120, 120)}<b>{escape(path)}</b><br>'
            f'<span class="{"flag" if flag else ""}">{text}</span></div>')


def pair(uri_a, uri_b, path_a, path_b, lines, flag=False) -> str:
    text = "<br>".join(escape(str(l)) for l in lines)
    return (f'<div class="pair">{img(uri_a, path_a, 120, 120)}{img(uri_b, path_b, 120, 120)}'
            f'<div><b>{escape(path_a)}</b><br><b>{escape(path_b)}</b><br>'
            f'<span class="{"flag" if flag else ""}">{text}</span></div></div>')


def grid(items) -> str:
    return f'<div class="grid">{"".join(items)}</div>' if items else '<p class="note">none</p>'


def section(sid: str, title: str, body: str) -> str:
    return f'<section id="{sid}"><h2>{escape(title)}</h2>{body}</section>'


def page(doc: dict) -> str:
    """The whole page: `doc` = {'title', 'subtitle', 'sections': [(id, title, html body)]}."""
    body = "".join(section(*s) for s in doc["sections"])
    return (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>{escape(doc["title"])}</title>'
            f'<style>{CSS}</style></head><body><h1>{escape(doc["title"])}</h1>'
            f'<p class="note">{escape(doc.get("subtitle", ""))}</p>{body}</body></html>\n')
