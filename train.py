"""Train, validate, test or predict with ptasr: ``python train.py fit`` trains the demo on the bundled corpus.

    python train.py fit                                   # configs/demo.yaml, CPU is enough
    python train.py fit -c configs/xls-r-300m_pt_cv7.yaml # the reference recipe
    python train.py fit -c configs/demo.yaml --ckpt_path last   # resume the newest run in its folder
    python train.py test -c configs/demo.yaml --ckpt_path runs/demo/version_0/checkpoints/last.ckpt
    python train.py fit --print_config                    # the full resolved configuration

See ``ptasr/train/cli.py`` for the CLI and ``configs/`` for the recipes. A wrong setting or path ends the run
with one line naming it (``PTASR_TRACEBACK=1`` shows the traceback; see ``ptasr/errors.py``).
"""

import sys

from ptasr import threads

# First: the OpenMP runtime reads its thread settings once, when torch loads (see ptasr/threads.py).
threads.apply_before_torch()

from lightning.fabric.utilities.exceptions import MisconfigurationException  # noqa: E402
from lightning.pytorch.utilities.rank_zero import rank_zero_only  # noqa: E402

from ptasr.errors import UserError, exit_status  # noqa: E402
from ptasr.train.cli import cli_main  # noqa: E402
from ptasr.train.module import TrainingDiverged  # noqa: E402
from ptasr.train.rank_failure import prog_of_rank  # noqa: E402


def _run() -> None:
    cli_main()  # arguments from sys.argv


def _other_rank_of_divergence(error: BaseException) -> bool:
    # Every DDP rank raises TrainingDiverged at the same update (its counts come from all-reduced gradients),
    # so rank 0's line speaks for all of them.
    return isinstance(error, TrainingDiverged) and rank_zero_only.rank != 0


def _prog(error: BaseException) -> str:
    # Under DDP each rank prints its own error, so the line names its rank; a divergence is every rank's.
    return "train.py" if isinstance(error, TrainingDiverged) else prog_of_rank("train.py")


if __name__ == "__main__":
    # Lightning's MisconfigurationException names Trainer settings that contradict each other: the user's to fix.
    sys.exit(exit_status(_run, _prog, (UserError, MisconfigurationException),
                         silent=_other_rank_of_divergence))
