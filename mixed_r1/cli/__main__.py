"""``python -m mixed_r1.cli …`` (e.g. under ``torchrun -m mixed_r1.cli train …``) = ``mixed-r1 …``."""
import sys

from mixed_r1.cli import main

sys.exit(main())
