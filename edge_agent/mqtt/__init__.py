"""MQTT: the transport (paho, the durable outbox and its spool), the JSON v1 dialect, the message
registry, and the link that composes them for the agent."""
