"""Validation scores of the training module: per mode and dose bin, as README lists them."""

import numpy as np
import pytest
import torch
from torch.utils.data import default_collate

from dislotrack.data_gen.sample import GeneratorConfig
from dislotrack.models.unet import RS_CH, UNet, UNetConfig
from dislotrack.train.data import FixedSynthetic
from dislotrack.train.module import DislocationModule


def rock_salt_scores(batch: dict) -> tuple[dict, DislocationModule]:
    """What validation logs for a two-frame 32² ``batch`` whose rock salt is frame 0's
    [0:10, 0:10] (100 px, predicted as [0:10, 5:15]: IoU 50/150) and frame 1's [0:4, 0:4]
    (16 px, predicted exactly), the network's output fixed; and the module, to score again."""
    truth = torch.zeros_like(batch["rs"])
    truth[0, 0, 0:10, 0:10] = 1
    truth[1, 0, 0:4, 0:4] = 1
    batch["rs"] = truth
    logits = torch.full((2, 4, 32, 32), -20.0)
    logits[0, RS_CH, 0:10, 5:15] = 20.0
    logits[1, RS_CH, 0:4, 0:4] = 20.0
    module = DislocationModule(UNet(UNetConfig(base_channels=4, depth=2)))
    module.forward = lambda image: logits
    logged: dict = {}
    module.log_dict = lambda metrics, **_: logged.update(metrics)
    module.log = lambda *args, **kwargs: None  # the step's loss: no trainer here
    module._eval_step(batch, "val")
    module._epoch_end("val")
    return logged, module


def test_rock_salt_iou_is_reported_per_mode_and_dose_bin_as_the_other_scores():
    # It was logged over all frames only (val/rs_iou), unlike F1, RMSE and h accuracy.
    batch = default_collate([FixedSynthetic(GeneratorConfig(size=32), n=2, seed=1)[i] for i in range(2)])
    batch["stem"] = torch.tensor([True, False])
    batch["dose"] = torch.tensor([50.0, 1000.0])  # dose_lt100, dose_ge500
    # frame 0 (STEM): IoU 50/150; frame 1 (HRTEM): predicted exactly
    logged, module = rock_salt_scores(batch)
    assert logged["val/rs_iou"] == pytest.approx(66 / 166)  # pooled over the frames
    assert logged["val/stem/rs_iou"] == pytest.approx(50 / 150)
    assert logged["val/dose_lt100/rs_iou"] == pytest.approx(50 / 150)
    assert logged["val/hrtem/rs_iou"] == 1.0 and logged["val/dose_ge500/rs_iou"] == 1.0
    assert "val/dose_100_500/rs_iou" not in logged  # no frame there: as val/dose_100_500/f1
    assert set(logged) >= {k.replace("f1", "rs_iou") for k in logged if k.endswith("/f1")}
    # A second epoch starts from zero.
    logged.clear()
    batch["rs_known"] = torch.tensor([0.0, 0.0])  # no rock salt annotated: undefined
    module._eval_step(batch, "val")
    module._epoch_end("val")
    assert np.isnan(logged["val/stem/rs_iou"]) and np.isnan(logged["val/rs_iou"])
