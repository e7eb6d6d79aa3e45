"""people-counter: ui package."""
