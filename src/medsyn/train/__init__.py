"""Training: the GAN loop, checkpoints with exact resume, the divergence guard and data-parallel training.

from medsyn.train import TrainConfig, train
cfg = TrainConfig(data="phantom?n=500", model="cgan", size=32, steps=2000, batch=64)
run = train(cfg, "runs/cgan32")                 # RUN/checkpoints, samples, losses.csv, config.yaml
train(None, "runs/cgan32", resume=True)         # continue a killed run exactly
"""

from medsyn.train.config import TrainConfig
from medsyn.train.trainer import Trainer, train

__all__ = ["TrainConfig", "Trainer", "train"]
