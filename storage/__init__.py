"""people-counter: storage package."""
