"""edge-recorder: record I2C IMU sessions on a Raspberry Pi and deliver them over MQTT."""

__version__ = "0.1.0"
