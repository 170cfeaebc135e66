"""The study's whole table: every backbone x {categorical, binary, custom} loss.

    python launch.py --config experiments/study.py
    python launch.py --config experiments/study.py:smoke          # all 12 cells, tiny, CPU
    python launch.py --config experiments/study.py --config.models=vgg16,vgg19 \
        --config.losses=categorical,custom

Each cell runs in its own sub-workdir (finished cells are skipped on rerun, interrupted ones
resume); ``study.md`` / ``study.csv`` / ``study_acc_vs_plus.png`` land in the study workdir.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(__file__))
import base  # noqa: E402


def get_config(arg=None):
    c = base.get_config(arg)
    c.name = "study" + ("_smoke" if arg == "smoke" else "")
    c.models = "vgg16,vgg19,resnet50,mobilenetv2"
    c.losses = "categorical,binary,custom"
    return c
