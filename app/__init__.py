"""people-counter: app package."""
