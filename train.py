"""Train, validate, test or predict with ptasr: ``python train.py fit`` trains the demo on the bundled corpus.

    python train.py fit                                   # configs/demo.yaml, CPU is enough
    python train.py fit -c configs/xls-r-300m_pt_cv7.yaml # the reference recipe
    python train.py fit -c configs/demo.yaml --ckpt_path last   # resume the newest run in its folder
    python train.py test -c configs/demo.yaml --ckpt_path runs/demo/version_0/checkpoints/last.ckpt
    python train.py fit --print_config                    # the full resolved configuration

See ``ptasr/train/cli.py`` for the CLI and ``configs/`` for the recipes.
"""

from ptasr.train.cli import cli_main

if __name__ == "__main__":
    cli_main()
