"""The `kinject` command line: one-line errors and exit code 2 for bad input, the commands grouped by what they touch."""
