"""The vision core: images, model families (dialects) and where they run (runtimes), prompts,
parsing, drawing, budgets.

Knows nothing of MCP or terminals; ``agent`` and ``mcp_server`` are thin layers over it.
"""
