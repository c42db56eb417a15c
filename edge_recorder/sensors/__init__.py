"""Sensor layer: the I2C bus protocol, one driver module per chip family, chip emulators."""
