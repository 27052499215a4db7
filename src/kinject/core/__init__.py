"""Plumbing every layer uses: one-line errors, the console, atomic files, statistics."""
