"""The stage configs: each notebook's parameters cell is the one typed declaration (kitlib.params, kitlib.config),
checked when the config is built, saved whole, and enough to rerun the stage (kitlib.stages)."""

from __future__ import annotations

import json
from typing import Optional

import numpy as np
import pytest
import yaml

from kitlib.config import StageConfig
from kitlib.demo import make_demo
from kitlib.params import (
    MISSING,
    ParameterError,
    canonical_type,
    check_value,
    coerce_text,
    declaration_from_source,
    notebook_parameters,
    read_declaration,
)
from kitlib.stages import EdaConfig, EnsembleConfig, OofConfig, SubmitConfig, TrainConfig
from tests.conftest import REPO

STAGES = (EdaConfig, TrainConfig, OofConfig, EnsembleConfig, SubmitConfig)


class _Toy(StageConfig):
    stage = "toy"


def _namespace(**values) -> dict:
    """A notebook's globals after its parameters cell: the annotations and the values."""
    annotations = {"exp": str, "epochs": Optional[int], "lr": float, "flips": bool, "kwargs": Optional[dict]}
    defaults = {"exp": "demo", "epochs": None, "lr": 1e-3, "flips": True, "kwargs": None}
    return {"__annotations__": annotations, **defaults, **values}


# ------------------------------------------------------------------------------------------------------- types


@pytest.mark.parametrize(
    ("annotation", "text"),
    [(int, "int"), (Optional[int], "Optional[int]"), ("int | None", "Optional[int]"), (dict, "dict"),
     ("Optional[list[int]]", "Optional[list[int]]"), ("typing.Union[str, None]", "Optional[str]"),
     (Optional[dict], "Optional[dict]")],
)  # fmt: skip
def test_canonical_type(annotation, text):
    assert canonical_type(annotation) == text


@pytest.mark.parametrize(
    ("value", "type_text", "kept"),
    [(3, "int", 3), (3, "float", 3.0), (None, "Optional[int]", None), ((16, 8), "list[int]", [16, 8]),
     ({"a": [1]}, "Optional[dict]", {"a": [1]}), (False, "bool", False), ("", "str", "")],
)  # fmt: skip
def test_check_value_keeps_values_of_the_type(value, type_text, kept):
    out = check_value("p", value, type_text)
    assert out == kept and type(out) is type(kept)


@pytest.mark.parametrize(
    ("value", "type_text", "match"),
    [("ten", "int", r"'epochs' = 'ten' \(str\) is not int"),
     ("3", "Optional[int]", r"'epochs' = '3' \(str\) is not Optional\[int\] \(it is a string; pass 3 without quotes\)"),
     (2.7, "int", r"'epochs' = 2.7 \(float\) is not int"),
     (True, "int", r"'epochs' = True \(bool\) is not int"),
     ("no", "bool", r"'epochs' = 'no' \(str\) is not bool"),
     ("false", "Optional[bool]", r"'epochs' = 'false' \(str\) is not Optional\[bool\] \(it is a string; pass False"),
     (0, "bool", r"'epochs' = 0 \(int\) is not bool"),
     ([1, "a"], "list[int]", r"is not list\[int\]")],
)  # fmt: skip
def test_check_value_names_the_parameter_the_value_and_the_type(value, type_text, match):
    with pytest.raises(ParameterError, match=match):
        check_value("epochs", value, type_text)


def test_coerce_text_follows_the_declared_type():
    assert coerce_text("exp", "001", "str") == "001"  # papermill's -p would make this the int 1
    assert coerce_text("epochs", "3", "Optional[int]") == 3 and coerce_text("epochs", "None", "Optional[int]") is None
    assert coerce_text("lr", "1e-3", "float") == 1e-3
    assert coerce_text("flips", "false", "bool") is False and coerce_text("flips", "True", "bool") is True
    assert coerce_text("kw", "{decoder_channels: [16, 8]}", "Optional[dict]") == {"decoder_channels": [16, 8]}
    with pytest.raises(ParameterError, match="'epochs': 'ten' is not int"):
        coerce_text("epochs", "ten", "int")
    with pytest.raises(ParameterError, match="'flips'"):
        coerce_text("flips", "yes", "bool")


# -------------------------------------------------------------------------------------------------- from_params


def test_from_params_builds_a_typed_frozen_config():
    cfg = _Toy.from_params(_namespace(epochs=3, lr=1))
    assert (cfg.exp, cfg.epochs, cfg.lr, cfg.flips) == ("demo", 3, 1.0, True) and isinstance(cfg.lr, float)
    assert cfg.types == {
        "exp": "str",
        "epochs": "Optional[int]",
        "lr": "float",
        "flips": "bool",
        "kwargs": "Optional[dict]",
    }
    with pytest.raises(AttributeError, match="frozen"):
        cfg.epochs = 4
    assert cfg.replace(epochs=5).epochs == 5 and cfg.epochs == 3
    with pytest.raises(AttributeError, match="no parameter 'epoch'; parameters"):
        _ = cfg.epoch


def test_from_params_reports_every_wrong_type():
    with pytest.raises(ParameterError) as err:
        _Toy.from_params(_namespace(epochs="3", flips="false"))
    assert "'epochs' = '3'" in str(err.value) and "'flips' = 'false'" in str(err.value)


def test_from_params_refuses_an_injected_name_the_cell_does_not_declare():
    with pytest.raises(ParameterError, match=r"toy: unknown parameter\(s\) 'epoch' = 1 \(did you mean epochs\?\)"):
        _Toy.from_params(_namespace(epoch=1))
    # in a notebook kernel only the names papermill injected count (IPython's history "In" holds the cells)
    kernel = {**_namespace(epochs=2), "epoch": 1, "history": [1, 2],
              "In": ["", "exp: str = 'demo'", "# Parameters\nepochs = 2\nepoch = 1\n"]}  # fmt: skip
    with pytest.raises(ParameterError, match="'epoch' = 1"):
        _Toy.from_params(kernel)
    del kernel["epoch"]
    kernel["In"][-1] = "# Parameters\nepochs = 2\n"
    assert _Toy.from_params(kernel).epochs == 2  # `history`, a later cell's variable, is not a parameter


def test_from_params_refuses_a_missing_required_parameter():
    namespace = _namespace()
    namespace["__annotations__"]["fold"] = int  # `fold: int` without a value, and papermill injected none
    with pytest.raises(ParameterError, match=r"missing required parameter\(s\) fold: int"):
        _Toy.from_params(namespace)


def test_declaration_from_source_reads_types_defaults_and_comments():
    source = (
        'from typing import Optional\n\nexp: str = "demo"  # the experiment\nfold: int\nlr: Optional[float] = None\n'
    )
    params = declaration_from_source(source)
    assert list(params) == ["exp", "fold", "lr"]
    assert params["exp"].default == "demo" and params["exp"].comment == "the experiment"
    assert params["fold"].default is MISSING and params["fold"].required
    assert params["lr"].type == "Optional[float]"
    with pytest.raises(ValueError, match="line 1: the default of 'n' must be a literal"):
        declaration_from_source("n: int = len([1])\n")
    with pytest.raises(ParameterError, match="'n' = 'a'"):
        declaration_from_source('n: int = "a"\n')


# ------------------------------------------------------------------------------------------------- the stages


@pytest.mark.parametrize("config", STAGES, ids=lambda c: c.stage)
def test_every_notebook_declares_its_stage_and_its_defaults_build(config):
    params = read_declaration(REPO / config.notebook)
    assert params and all(p.type for p in params.values())
    assert not [p.name for p in params.values() if p.required]
    cfg = config.from_notebook()
    assert cfg.preset.name == "demo" and cfg.config_path.name.endswith("json")


def test_train_config_none_takes_the_recipe_and_the_notebook_wins():
    cfg = TrainConfig.from_notebook(preset="masks", batch_size=2)
    assert cfg.batch_size == 2 and cfg.epochs == 30 and cfg.monitor == "valid_pixel_error"
    assert cfg.types["epochs"] == "Optional[int]"
    assert "ISBI" in cfg.recipe_source and cfg.model_preset is cfg.preset
    with pytest.raises(ValueError, match="height must be >= 1"):
        TrainConfig.from_notebook(height=0)


def test_a_saved_config_loads_back_equal_and_refuses_other_stages(tmp_path):
    cfg = TrainConfig.from_notebook(preset="demo", epochs=2, model_kwargs={"decoder_channels": [8, 8, 8, 8, 8]})
    path = cfg.save(tmp_path / "config.json", run_id="abc")
    back = TrainConfig.load(path)
    assert back == cfg and back.extra["run_id"] == "abc" and back.run_id() == cfg.run_id()
    with pytest.raises(ValueError, match="a config of stage '10_train', not '20_oof'"):
        OofConfig.load(path)
    data = json.loads(path.read_text())
    data["params"]["epochs"] = "two"
    path.write_text(json.dumps(data))
    with pytest.raises(ParameterError, match=r"config.json: 10_train: parameter 'epochs' = 'two'"):
        TrainConfig.load(path)


def test_notebook_parameters_keep_what_each_notebook_declares(tmp_path):
    params = tmp_path / "p.yaml"
    params.write_text("epochs: 3\nheight: 64\nexps: a,b\n")
    train = notebook_parameters(REPO / "notebooks/10_train.py", {"exp": "001", "n_folds": "5"}, [params])
    assert train == {"epochs": 3, "height": 64, "exp": "001"}  # n_folds and exps are other notebooks'
    eda = notebook_parameters(REPO / "notebooks/00_eda.py", {"exp": "001", "n_folds": "5"}, [params])
    assert eda == {"exp": "001", "n_folds": 5}
    params.write_text("epoch: 3\n")
    with pytest.raises(ParameterError, match="unknown parameter 'epoch': no notebook declares it; did you mean epochs"):
        notebook_parameters(REPO / "notebooks/10_train.py", {}, [params])
    params.write_text("epochs: three\n")
    with pytest.raises(ParameterError, match="'epochs' = 'three'"):
        notebook_parameters(REPO / "notebooks/10_train.py", {}, [params])


def test_config_command_line_writes_typed_yaml(tmp_path, capsys):
    from kitlib.params import main

    assert main(["params", str(REPO / "notebooks/20_oof.py"), "--set", "exp", "007", "--set", "top_k", "9"]) == 0
    assert yaml.safe_load(capsys.readouterr().out) == {"exp": "007", "top_k": 9}
    assert main(["params", str(REPO / "notebooks/20_oof.py"), "--set", "top_k", "many"]) == 2
    assert "error: parameter 'top_k'" in capsys.readouterr().err


def test_a_fold_reruns_from_its_saved_config(tmp_path):
    """The config.json of a trained fold is enough to train it again: the same OOF bytes and weights."""
    import torch

    from kitlib.train import train_fold
    from tests.test_train import train_tiny

    data = make_demo(tmp_path / "d", n_train=12, n_test=2, height=64, width=96)
    train_tiny(data, tmp_path / "a", "first", n_folds=2, epochs=1)
    saved = TrainConfig.load(tmp_path / "a" / "first" / "fold0" / "config.json")
    again = saved.replace(exp="again")
    (again.exp_dir).mkdir(parents=True)
    (again.exp_dir / "folds.csv").write_bytes((saved.exp_dir / "folds.csv").read_bytes())
    train_fold(again)
    a, b = saved.fold_dir, again.fold_dir
    assert np.array_equal(np.load(a / "oof_probs.npy"), np.load(b / "oof_probs.npy"))
    best_a, best_b = (torch.load(d / "best.pt", weights_only=True)["state_dict"] for d in (a, b))
    assert all(torch.equal(best_a[k], best_b[k]) for k in best_a)
