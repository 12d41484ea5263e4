"""Named recipes (``-p recipe NAME``): each builds a checked config and its loss, layered under the notebook's own
parameters and over the preset's recipe; a wrong name or task is a clear error."""

from __future__ import annotations

import pytest

from kitlib.recipes import NAMED_RECIPES, TRAIN_RECIPES
from kitlib.stages import TrainConfig
from kitlib.train import build_loss


@pytest.mark.parametrize("name", sorted(NAMED_RECIPES))
def test_every_named_recipe_builds_a_config_and_its_loss(name):
    recipe = NAMED_RECIPES[name]
    cfg = TrainConfig.from_notebook(preset="cassava", recipe=name)
    for key, value in recipe.items():
        if key == "recipe_source":
            assert cfg.recipe_source == value and "Cassava" in value
        elif key != "task":
            assert getattr(cfg, key) == value, key
    loss = build_loss(cfg)
    assert type(loss).__name__ != "NoneType"


def test_the_notebook_overrides_a_named_recipe_which_overrides_the_preset():
    cfg = TrainConfig.from_notebook(preset="cassava", recipe="cassava_1st_b4_bitempered", epochs=3, warmup_epochs=0.5)
    assert (cfg.epochs, cfg.loss) == (3, "bi_tempered")
    assert cfg.loss_kwargs == {"t1": 0.8, "t2": 1.4, "label_smoothing": 0.06}
    plain = TrainConfig.from_notebook(preset="cassava")
    assert plain.loss == TRAIN_RECIPES["cassava"]["loss"]
    assert cfg.run_id() != plain.run_id()


def test_a_wrong_recipe_is_a_clear_error():
    with pytest.raises(KeyError, match=r"unknown recipe 'cassava_1st'.*cassava_1st_b4_bitempered"):
        TrainConfig.from_notebook(preset="cassava", recipe="cassava_1st")
    with pytest.raises(ValueError, match=r"trains a classification model; preset 'demo'"):
        TrainConfig.from_notebook(preset="demo", recipe="cassava_1st_b4_bitempered")
