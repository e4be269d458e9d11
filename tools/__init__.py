"""The vision core: images, backends, prompts, parsing, drawing, budgets.

Knows nothing of MCP or terminals; ``agent`` and ``mcp_server`` are thin layers over it.
"""
