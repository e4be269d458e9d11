"""Small SVG icons for the server and its tools, as data: URIs (nothing to fetch, nothing to host)."""

from __future__ import annotations

import base64

from mcp_types import Icon

#: each tool's glyph, drawn on a 24x24 grid inside the shared rounded frame
GLYPHS = {
    # an eye
    "describe": '<path d="M3 12s3.5-6 9-6 9 6 9 6-3.5 6-9 6-9-6-9-6z"/><circle cx="12" cy="12" r="2.5"/>',
    # lines of text
    "ocr": '<path d="M7 8h10M7 12h10M7 16h6"/>',
    # a box around a dot
    "detect": '<rect x="6" y="6" width="12" height="12" stroke-dasharray="3 2"/><circle cx="12" cy="12" r="1.5"/>',
    # bars of rising height
    "compare_budgets": '<path d="M7 17v-3M11 17v-6M15 17v-9"/>',
    # a speech bubble
    "chat": '<path d="M5 6h14v9H10l-4 3v-3H5z"/>',
    # curly braces: a JSON object
    "extract": '<path d="M10 6c-2 0-2 1-2 3s-1 3-2 3c1 0 2 1 2 3s0 3 2 3M14 6c2 0 2 1 2 3s1 3 2 3c-1 0-2 1-2 3s0 3-2 3"/>',
    # the server: an image frame with a mountain
    "server": '<rect x="5" y="6" width="14" height="12"/><path d="M6 17l4-5 3 3 2-2 3 4"/>',
}


def icon(name: str) -> list[Icon]:
    """The icon of a tool (or of the server, ``"server"``), as MCP wants it: a list."""
    svg = (
        '<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 24 24" fill="none" stroke="#2b6cb0" '
        'stroke-width="1.6" stroke-linecap="round" stroke-linejoin="round">'
        '<rect x="1" y="1" width="22" height="22" rx="5" stroke="#90cdf4"/>' + GLYPHS[name] + "</svg>"
    )
    uri = "data:image/svg+xml;base64," + base64.b64encode(svg.encode()).decode()
    return [Icon(src=uri, mime_type="image/svg+xml", sizes=["any"])]
