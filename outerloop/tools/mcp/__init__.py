"""The MCP application over the tool registry: the server (stdio and streamable HTTP), the
client the tool agent calls through, the ``outerloop mcp`` command and the user-facing tools."""
