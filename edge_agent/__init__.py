"""faultwatch edge agent: numpy-only inference, calibration and MQTT events. Never imports torch."""
