"""Fixed-rate sampling: one loop per bus draining FIFOs into a bounded ring per sensor."""
