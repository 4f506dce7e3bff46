"""The node agent: one per host, it keeps the host's pool servers and volume targets
running from a desired state and serves the node API and the metrics (docs/agent.md)."""
