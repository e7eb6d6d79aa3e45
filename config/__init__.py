"""people-counter: config package."""
