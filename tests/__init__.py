"""people-counter: tests package."""
