"""This device's own view: head store and refit, commissioning, drift, health."""
