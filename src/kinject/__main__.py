"""`python -m kinject ...`: the same command line as `kinject ...` (what `accelerate launch -m kinject` runs)."""

from kinject.cli.main import main

main()
