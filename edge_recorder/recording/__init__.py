"""Recording: sessions as windows over the rings, written to MCAP files in the device store."""
