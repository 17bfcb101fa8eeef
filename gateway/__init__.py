"""hazard-gateway: edge gateway for major-hazard installations (protocol-independent core)."""
