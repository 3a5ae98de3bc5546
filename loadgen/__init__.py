"""The load generator: many simulated devices in one process against a live stack. Host-side:
imports the device runtime (edge_agent) and the contract (routing), never the reverse."""
