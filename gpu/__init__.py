"""people-counter: gpu package."""
