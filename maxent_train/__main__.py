"""`python -m maxent_train ...` (used by `torchrun --nproc-per-node N -m maxent_train fit ...`).

The trainer's own commands only (fit, export, models, miou); the installed ``maxent-train`` adds ``predict``.
"""
from .cli import main

if __name__ == "__main__":
    main()
