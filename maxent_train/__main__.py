"""`python -m maxent_train ...` (used by `torchrun --nproc-per-node N -m maxent_train fit ...`)."""
from .cli import main

main()
