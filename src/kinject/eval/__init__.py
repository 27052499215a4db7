"""Scoring a condition: the evaluation of a task under a method and K, free-form grading and the judge, and the results store."""
