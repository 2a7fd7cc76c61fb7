"""Plain-text and HTML tables: the one printer of rows for the lab, the
recordings and the segment tables.

Example::

    >>> print(text_table(("a", "bb"), [("1", "x"), ("22", "y")], right=frozenset({0})))
     a  bb
     1  x
    22  y
"""

from __future__ import annotations

import html
from collections.abc import Sequence

__all__ = ["text_table", "html_table"]


def text_table(head: Sequence[str], rows: Sequence[Sequence[str]],
               right: frozenset[int] = frozenset()) -> str:
    """Plain-text table; columns in *right* are right-aligned, the last
    column (free text) is not padded.

    Example::

        >>> text_table(("n",), [("1",)])
        'n\\n1'
    """
    widths = [max(len(str(x)) for x in col) for col in zip(head, *rows)]
    widths[-1] = 0
    lines = []
    for row in (head, *rows):
        cells = [str(v).rjust(w) if i in right else str(v).ljust(w)
                 for i, (v, w) in enumerate(zip(row, widths))]
        lines.append("  ".join(cells).rstrip())
    return "\n".join(lines)


def html_table(head: Sequence[str], rows: Sequence[Sequence[str]],
               right: frozenset[int] = frozenset()) -> str:
    """The same table as HTML, for Jupyter (cells escaped).

    Example::

        >>> html_table(("a",), [("<b>",)])
        '<table><thead><tr><th>a</th></tr></thead><tbody><tr><td>&lt;b&gt;</td></tr></tbody></table>'
    """
    th = "".join(f"<th>{html.escape(h)}</th>" for h in head)
    body = "".join(
        "<tr>" + "".join(
            (f"<td style='text-align:right'>{html.escape(str(v))}</td>" if i in right
             else f"<td>{html.escape(str(v))}</td>")
            for i, v in enumerate(row)) + "</tr>"
        for row in rows)
    return f"<table><thead><tr>{th}</tr></thead><tbody>{body}</tbody></table>"
