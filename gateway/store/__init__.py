"""Shared state behind one small interface: Redis for fleets, memory for one process."""
