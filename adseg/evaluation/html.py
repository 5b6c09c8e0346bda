"""HTML twins of the Markdown tables (summary.md, the ADDA, GAN and learning-curve tables), for
the Snakemake report (``snakemake --report report.html``): its front page includes them, and
each is a result of its own.

A twin is an HTML fragment (a style block and one ``<div>``) so that it reads alone in a
browser and can be placed inside the report's page as it is.
"""

from __future__ import annotations

from pathlib import Path

from adseg.io import write_text

STYLE = """<meta charset="utf-8">
<style>
.adseg-table { font-family: sans-serif; font-size: 14px; max-width: 75em; }
.adseg-table table { border-collapse: collapse; margin: 0.6em 0 1.2em; }
.adseg-table th, .adseg-table td { border: 1px solid #ccc; padding: 0.25em 0.6em; }
.adseg-table th { background: #f2f2f2; }
.adseg-table td { font-variant-numeric: tabular-nums; }
.adseg-table code { background: #f6f6f6; padding: 0 0.2em; }
</style>
"""


def markdown_to_html(text: str) -> str:
    """A Markdown document (pipe tables, lists, code) as an HTML fragment."""
    import markdown

    body = markdown.markdown(text, extensions=["tables", "sane_lists", "fenced_code"])
    return f'{STYLE}<div class="adseg-table">\n{body}\n</div>\n'


def write_html_twin(md_path: str | Path) -> Path:
    """Write ``<name>.html`` beside ``<name>.md`` (atomically); returns its path."""
    md_path = Path(md_path)
    out = md_path.with_suffix(".html")
    write_text(out, markdown_to_html(md_path.read_text()))
    return out
