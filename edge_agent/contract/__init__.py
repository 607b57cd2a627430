"""The contract between workstation and device: preprocessing, bundle, wire payloads."""
