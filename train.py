"""Train, validate, test or predict with ptasr: ``python train.py fit`` trains the demo on the bundled corpus.

    python train.py fit                                   # configs/demo.yaml, CPU is enough
    python train.py fit -c configs/xls-r-300m_pt_cv7.yaml # the reference recipe
    python train.py fit -c configs/demo.yaml --ckpt_path last   # resume the newest run in its folder
    python train.py test -c configs/demo.yaml --ckpt_path runs/demo/version_0/checkpoints/last.ckpt
    python train.py fit --print_config                    # the full resolved configuration

See ``ptasr/train/cli.py`` for the CLI and ``configs/`` for the recipes.
"""

import os
import sys

from lightning.fabric.utilities.exceptions import MisconfigurationException
from lightning.pytorch.utilities.rank_zero import rank_zero_only

from ptasr.model.convert import CheckpointError
from ptasr.train.cli import cli_main
from ptasr.train.module import TrainingDiverged

# What a user can fix: a wrong path, a mismatched checkpoint, a bad value, a learning rate that diverges, Trainer
# settings that contradict each other (Lightning's MisconfigurationException).
# These end with one line naming the problem; PTASR_TRACEBACK=1 shows the traceback instead.
USER_ERRORS = (FileNotFoundError, NotADirectoryError, CheckpointError, ValueError, OSError, TrainingDiverged,
               MisconfigurationException)

if __name__ == "__main__":
    try:
        cli_main()
    except USER_ERRORS as error:
        if os.environ.get("PTASR_TRACEBACK"):
            raise
        if isinstance(error, TrainingDiverged) and rank_zero_only.rank != 0:
            # Every DDP rank raises it at the same update (its counts come from all-reduced gradients), so
            # rank 0's line speaks for all of them.
            sys.exit(1)
        sys.exit(f"train.py: error: {error} (PTASR_TRACEBACK=1 shows where)")
