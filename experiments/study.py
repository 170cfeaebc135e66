"""The study's whole table: every backbone x {categorical, binary, custom} loss.

    python launch.py --config experiments/study.py
    python launch.py --config experiments/study.py:smoke          # all 12 cells, tiny, CPU
    python launch.py --config experiments/study.py --config.models=vgg16,vgg19 \
        --config.losses=categorical,custom

Each cell runs in its own sub-workdir (finished cells are skipped on rerun, interrupted ones
resume); ``study.md`` / ``study.csv`` / ``study_acc_vs_plus.png`` land in the study workdir.
"""
from handjax.config import study_config as get_config# noqa: F401
