"""Serving: one admission control and byte-bounded caches for the app, and its guidance texts."""
