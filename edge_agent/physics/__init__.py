"""Bearing physics: the vibration simulator, envelope evidence and the physics view."""
