"""Finding and reading stored sessions: listing, journeys, CSV export, plots."""
