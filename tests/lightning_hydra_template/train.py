"""A stand-in for lightning-hydra-template's ``src/train.py``: no MNIST and no training. It returns a made-up
validation accuracy for ``optimized_metric`` (``val/acc_best``, the metric ``hparams_search/mnist_optuna.yaml``
maximizes), highest at lr 0.01, batch size 64 and wide layers, so a sweep has something to find."""

import math

import hydra
from omegaconf import DictConfig


def val_acc_best(cfg: DictConfig) -> float:
    lr_penalty = (math.log10(cfg.model.optimizer.lr) + 2) ** 2 / 10
    batch_penalty = abs(math.log2(cfg.datamodule.batch_size) - 6) / 20
    width = (cfg.model.net.lin1_size + cfg.model.net.lin2_size + cfg.model.net.lin3_size) / 768
    return 0.99 - lr_penalty - batch_penalty - (1 - width) / 10


@hydra.main(version_base="1.3", config_path="configs", config_name="train.yaml")
def main(cfg: DictConfig) -> float | None:
    metrics = {"val/acc_best": val_acc_best(cfg)}
    return metrics[cfg.optimized_metric] if cfg.get("optimized_metric") else None


if __name__ == "__main__":
    main()
