"""Shared fixtures. Integration fixtures start real embedded Kubo nodes in a private swarm."""
