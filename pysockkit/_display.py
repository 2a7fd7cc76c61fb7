"""Plain-text and HTML tables: the one printer of rows for the lab, the
recordings, the segment tables, TCP_INFO, socket listings and state traces.

Example::

    >>> print(text_table(("a", "bb"), [("1", "x"), ("22", "y")], right=frozenset({0})))
     a  bb
     1  x
    22  y
"""

from __future__ import annotations

import html
from collections.abc import Sequence
from typing import Union

__all__ = ["text_table", "html_table", "Markup", "Section"]


class Markup(str):
    """An HTML table cell that is HTML already: written as it is, not
    escaped (build it with ``html.escape`` around anything it quotes).

    Example::

        >>> html_table(("state",), [(Markup("<b>LISTEN</b>"),)])
        '<table><thead><tr><th>state</th></tr></thead><tbody><tr><td><b>LISTEN</b></td></tr></tbody></table>'
    """

    __slots__ = ()


class Section(str):
    """A row of an HTML table that names the group of rows below it (one
    left-aligned header cell across every column).

    Example::

        >>> html_table(("field", "value"), [Section("Totals")]).split("<tbody>")[1]
        "<tr><th colspan='2' style='text-align:left'>Totals</th></tr></tbody></table>"
    """

    __slots__ = ()


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


def _cell(v: object) -> str:
    return v if isinstance(v, Markup) else html.escape(str(v))


def html_table(head: Sequence[str], rows: Sequence[Union[Sequence[object], Section]],
               right: frozenset[int] = frozenset()) -> str:
    """The same table as HTML, for Jupyter: cells escaped (but a
    :class:`Markup` cell), columns in *right* right-aligned, a
    :class:`Section` row heading the rows after it.

    Example::

        >>> html_table(("a",), [("<b>",)])
        '<table><thead><tr><th>a</th></tr></thead><tbody><tr><td>&lt;b&gt;</td></tr></tbody></table>'
    """
    th = "".join(f"<th>{_cell(h)}</th>" for h in head)
    body = "".join(
        f"<tr><th colspan='{len(head)}' style='text-align:left'>{html.escape(row)}</th></tr>"
        if isinstance(row, Section) else
        "<tr>" + "".join(
            (f"<td style='text-align:right'>{_cell(v)}</td>" if i in right
             else f"<td>{_cell(v)}</td>")
            for i, v in enumerate(row)) + "</tr>"
        for row in rows)
    return f"<table><thead><tr>{th}</tr></thead><tbody>{body}</tbody></table>"
