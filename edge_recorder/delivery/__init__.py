"""Delivery: the MQTT link, the publisher draining the store's outbox, the status topic."""
