"""people-counter: models package."""
