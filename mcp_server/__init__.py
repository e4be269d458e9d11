"""The MCP adapter over the vision core (``tools``)."""
