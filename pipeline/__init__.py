"""people-counter: pipeline package."""
