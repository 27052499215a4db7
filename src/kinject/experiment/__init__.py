"""A run of the grid: the config, `init`'s first-run design, the stage graph with its cost plan, and the runner with its cache."""
