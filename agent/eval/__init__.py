"""Offline evaluation of the agent: BFCL data and scoring."""
