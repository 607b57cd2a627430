"""MQTT: the link to the broker, the durable outbox and its spool."""
