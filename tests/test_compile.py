"""``compile`` (torch.compile) for training and inference: the same weights (not in run_id), checkpoints with the plain
module's keys that load into a compiled or a plain model, resuming across compile on/off, EMA on the plain module,
a clear error without a C++ compiler.

Inductor takes minutes on these 2 CPU cores (140 s for one tiny Unet), so the tests compile with
``compile_backend="aot_eager"`` (dynamo's graph capture and AOTAutograd, no code generation); the inductor test runs
where there is a GPU (or with ``KIT_TEST_INDUCTOR=1``).
"""

from __future__ import annotations

import os
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pytest
import torch

from kitlib import inference, train
from kitlib.models import create_model, load_model, save_model
from kitlib.pretrained import read_state_dict
from kitlib.runtime import compile_model, unwrap
from kitlib.stages import SubmitConfig
from tests.test_models import TINY, images
from tests.test_train import _config, demo_exp  # noqa: F401 - the tiny demo experiment fixture

AOT = SimpleNamespace(compile=True, compile_mode=None, compile_backend="aot_eager")
CONFIG = {"arch": "unet", "encoder_name": TINY, "classes": 2, "decoder_channels": (16, 16, 8, 8, 8)}


def test_compile_parameters_leave_run_id_and_are_checked(demo_exp):  # noqa: F811
    plain = _config(demo_exp, "c")
    compiled = _config(demo_exp, "c", compile=True, compile_backend="aot_eager")
    assert compiled.compile and plain.run_id() == compiled.run_id()
    assert plain.run_id() != _config(demo_exp, "c", epochs=9).run_id()  # the negative control
    for kwargs, match in [
        ({"compile_mode": "fastest"}, "unknown compile_mode 'fastest'"),
        ({"compile_backend": "no_such_backend"}, "unknown compile_backend 'no_such_backend'.*inductor"),
        ({"compile_mode": "max-autotune", "compile_backend": "aot_eager"}, "inductor's"),
    ]:
        with pytest.raises(ValueError, match=match):
            _config(demo_exp, "c", **kwargs)
    submit = SubmitConfig.from_notebook(compile=True, compile_mode="reduce-overhead")
    assert submit.compile and submit.compile_mode == "reduce-overhead"
    with pytest.raises(ValueError, match="compile_backend"):
        SubmitConfig.from_notebook(compile_backend="no_such_backend")


def test_checkpoints_load_either_way(tmp_path):
    model = create_model(**CONFIG).eval()
    compiled = compile_model(model, AOT)
    assert compiled is not model and unwrap(compiled) is model
    assert compile_model(model, SimpleNamespace(compile=False)) is model
    assert all(k.startswith("_orig_mod.") for k in compiled.state_dict())  # what a naive save would write
    x = images(2, 64)
    with torch.no_grad():
        torch.testing.assert_close(compiled(x), model(x), rtol=1e-5, atol=1e-5)
    save_model(tmp_path / "from_compiled.pt", unwrap(compiled), CONFIG)  # how the kit saves (kitlib.checkpoint)
    loaded, ckpt = load_model(tmp_path / "from_compiled.pt")  # into a plain model
    assert not any(k.startswith("_orig_mod.") for k in ckpt["state_dict"])
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))
    torch.save(compiled.state_dict(), tmp_path / "prefixed.pt")  # a file written elsewhere from a compiled model
    assert read_state_dict(tmp_path / "prefixed.pt").keys() == model.state_dict().keys()
    fresh = create_model(**CONFIG).eval()
    fresh_compiled = compile_model(fresh, AOT)
    unwrap(fresh_compiled).load_state_dict(ckpt["state_dict"])  # a plain checkpoint into a compiled model
    with torch.no_grad():
        torch.testing.assert_close(fresh_compiled(x), model(x), rtol=1e-5, atol=1e-5)


def test_inductor_without_a_compiler_fails_naming_the_parameter(monkeypatch):
    from torch._inductor import config as inductor_config

    monkeypatch.setattr(inductor_config.cpp, "cxx", ("no-such-cxx-compiler-kit",))
    with pytest.raises(RuntimeError, match=r"compile=True.*no C\+\+ compiler.*compile_backend aot_eager"):
        compile_model(create_model(**CONFIG), SimpleNamespace(compile=True, compile_mode=None, compile_backend=None))


def test_compiled_training_resumes_eager_and_inference_compiles(demo_exp):  # noqa: F811
    """A compiled run (with an EMA) stopped after its first epoch, resumed without compile (same run_id, last.pt of
    plain keys): the same run as one trained eagerly throughout, up to float rounding of the traced graph; then
    40_submit's compile gives the eager predictions."""
    kwargs = dict(epochs=2, ema_decay=0.5)
    eager = _config(demo_exp, "eager", **kwargs)
    first = _config(demo_exp, "compiled", compile=True, compile_backend="aot_eager", **kwargs)
    train.train_fold(first, stop_after_epoch=0)
    last = torch.load(first.fold_dir / "last.pt", weights_only=True)
    assert last["epoch"] == 0 and not any("_orig_mod" in k for k in last["state_dict"])
    assert not any("_orig_mod" in k for k in last["ema"])  # the EMA copies the plain module
    resumed = train.train_fold(_config(demo_exp, "compiled", **kwargs))
    reference = train.train_fold(eager)
    hist_a, hist_b = (pd.read_csv(Path(r["history"])).drop(columns="time_s") for r in (reference, resumed))
    pd.testing.assert_frame_equal(hist_a, hist_b, check_exact=False, rtol=1e-3, atol=1e-4)
    best_a = torch.load(eager.fold_dir / "best.pt", weights_only=True)["state_dict"]
    best_b = torch.load(first.fold_dir / "best.pt", weights_only=True)["state_dict"]
    assert best_a.keys() == best_b.keys()
    for key, value in best_a.items():
        torch.testing.assert_close(best_b[key], value, rtol=1e-3, atol=1e-4, msg=key)

    members = inference.load_members(eager.artifacts_root, "eager", folds=[0])
    compiled = inference.compile_members(members, AOT)
    assert isinstance(compiled[0][0][0].model, torch._dynamo.eval_frame.OptimizedModule)
    assert inference.compile_members(members, SimpleNamespace(compile=False)) is members
    test_df = _test_table(eager)
    plain = list(inference.predict_test(members, test_df, eager.preset, batch_size=4))
    fast = list(inference.predict_test(compiled, test_df, eager.preset, batch_size=4))
    assert [ids for ids, *_ in plain] == [ids for ids, *_ in fast]
    for (_, p, _), (_, q, _) in zip(plain, fast, strict=True):
        torch.testing.assert_close(torch.as_tensor(q), torch.as_tensor(p), rtol=1e-4, atol=1e-5)


def _test_table(cfg) -> pd.DataFrame:
    from kitlib.formats import load_competition

    return load_competition(cfg.preset, cfg.data_path, split="test")


@pytest.mark.slow
@pytest.mark.skipif(
    not (torch.cuda.is_available() or os.environ.get("KIT_TEST_INDUCTOR")),
    reason="inductor compiles for minutes on a small CPU: runs on a GPU, or with KIT_TEST_INDUCTOR=1",
)
def test_inductor_compiles_and_matches_eager():
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model = create_model(**CONFIG).eval().to(device)
    compiled = compile_model(model, SimpleNamespace(compile=True, compile_mode=None, compile_backend=None))
    x = images(2, 64).to(device)
    with torch.no_grad():
        torch.testing.assert_close(compiled(x), model(x), rtol=1e-3, atol=1e-3)
