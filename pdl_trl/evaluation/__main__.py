"""`python -m pdl_trl.evaluation ...` runs `pdl-trl eval ...` (`pdl_trl/scripts/eval.py`)."""

from pdl_trl.scripts.eval import main


main()
