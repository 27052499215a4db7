"""From stored results to the report a person reads: tables, plots, confidence intervals, forgetting and the recommendation."""
