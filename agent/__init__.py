"""The command line and terminal client of vlm-agent."""
