"""The students' engines from bundle JSON: extra trainer and validator handlers and a learning-rate
scheduler, given in a small config file merged on top of the isic_im bundle."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
CONFIGS = REPO / "bundles/isic_im/configs"

ENGINES = {
    "lr_scheduler": {
        "_target_": "torch.optim.lr_scheduler.StepLR",
        "_mode_": "callable",
        "step_size": 1,
        "gamma": 0.1,
    },
    "student_handlers": [
        {
            "_target_": "StatsHandler",
            "epoch_log": False,
            "iteration_print_logger": "$lambda engine: open(@output_dir + '/rates.txt', 'a').write("
            "'%d %r\\n' % (engine.state.epoch, engine.optimizer.param_groups[0]['lr']))",
        }
    ],
    "student_val_handlers": [
        {
            "_target_": "StatsHandler",
            "iteration_log": False,
            "epoch_print_logger": "$lambda engine: open(@output_dir + '/validated.txt', 'a').write("
            "'%d\\n' % engine.state.epoch)",
        }
    ],
}


@pytest.mark.slow
def test_bundle_scheduler_and_student_handlers_run(isic_tiny, tmp_path):
    from monai.bundle import run

    engines = tmp_path / "engines.json"
    engines.write_text(json.dumps(ENGINES))
    out = tmp_path / "run"
    run(
        config_file=[str(CONFIGS / "train.json"), str(CONFIGS / "demo.json"), str(engines)],
        logging_file=False,
        dataset_dir=isic_tiny,
        output_dir=str(out),
        image_size=[32, 32],
        method="ldt",
        epochs=2,
        min_steps=0,
        batch_size=4,
        num_students=1,
        num_teachers=1,
        num_generations=0,
        learning_rate=0.002,
        progress=False,
    )
    rates = [line.split() for line in (out / "rates.txt").read_text().splitlines()]
    by_epoch = {int(epoch): float(rate) for epoch, rate in rates}
    assert len(rates) > len(by_epoch) == 2  # every iteration of the two epochs
    assert by_epoch[1] == 0.002 and by_epoch[2] == pytest.approx(0.0002)
    assert (out / "validated.txt").read_text().split() == ["1", "2"]
    assert (out / "generation_0" / "summary.json").is_file()
