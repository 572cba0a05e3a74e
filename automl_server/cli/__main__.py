"""`python -m automl_server.cli` (how `automl serve` starts its children)."""
from automl_server.cli import main

main()
