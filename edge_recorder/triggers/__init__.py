"""Triggers turn the outside world (MQTT commands, GPIO buttons, a schedule) into events."""
