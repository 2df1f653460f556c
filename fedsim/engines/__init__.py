"""Engines: ray (Flower's Simulation Engine), inline (in-process) and deployment (flwr run)."""
