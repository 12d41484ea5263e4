"""Knowledge distillation (``kitlib.distill``): the soft term by hand, its gradient, the alpha / teacher limits, batch
mixes of the teacher, the teacher's soft masks moved with the image, the teacher's checks, and folds trained through
10_train's parameters: distill_alpha 1 trains exactly as the hard labels alone (classification and segmentation)."""

from __future__ import annotations

import logging
import pickle
from pathlib import Path

import albumentations as A
import numpy as np
import pandas as pd
import pytest
import torch
from torch.nn import functional as F

from kitlib import distill, engine, train
from kitlib.class_losses import CrossEntropyLoss
from kitlib.data import SegmentationDataset, make_dataset
from kitlib.demo import make_demo
from kitlib.distill import DistillationLoss, TeacherProbs, attach_teacher, load_teacher, soft_kl
from kitlib.formats import load_competition
from kitlib.io import write_csv, write_json
from kitlib.losses import SoftBCELoss
from kitlib.mixes import BatchMix, SegmentationMix
from kitlib.params import _cell_source
from kitlib.predictions import gather_oof
from kitlib.presets import PRESETS
from kitlib.stages import TrainConfig
from tests.conftest import REPO
from tests.test_classification_training import _config as cassava_config
from tests.test_classification_training import cassava_exp  # noqa: F401  (a fixture)
from tests.test_train import _config as demo_config
from tests.test_train import demo_exp  # noqa: F401  (a fixture)

# ------------------------------------------------------------------------------------------------ the soft term


def _softmax(x: np.ndarray, axis: int = 1) -> np.ndarray:
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


LOGITS = np.array([[1.0, 0.0, -1.0], [0.5, 2.0, 0.0]])
TEACHER = np.array([[0.7, 0.2, 0.1], [0.1, 0.3, 0.6]])


@pytest.mark.parametrize("temperature", [1.0, 2.0])
def test_softmax_kl_by_hand(temperature):
    p_t = TEACHER ** (1 / temperature) / (TEACHER ** (1 / temperature)).sum(1, keepdims=True)  # softmax(log p / T)
    q_t = _softmax(LOGITS / temperature)
    expected = (p_t * np.log(p_t / q_t)).sum(1).mean()
    got = soft_kl(torch.tensor(LOGITS), torch.tensor(TEACHER), temperature, "softmax")
    assert got.item() == pytest.approx(expected, rel=1e-5)
    # alpha 0.3: 0.3 * CE + 0.7 * T^2 * KL
    labels = torch.tensor([0, 1])
    loss = DistillationLoss(CrossEntropyLoss(), 0.3, temperature, "softmax")
    ce = F.cross_entropy(torch.tensor(LOGITS), labels).item()
    value = loss(torch.tensor(LOGITS), labels, torch.tensor(TEACHER)).item()
    assert value == pytest.approx(0.3 * ce + 0.7 * temperature**2 * expected, rel=1e-5)
    assert loss.last_values["soft"].item() == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize("temperature", [1.0, 2.0])
def test_sigmoid_kl_by_hand(temperature):
    p = TEACHER ** (1 / temperature)
    p_t = p / (p + (1 - TEACHER) ** (1 / temperature))  # sigmoid(logit(p) / T)
    q_t = _sigmoid(LOGITS / temperature)
    expected = (p_t * np.log(p_t / q_t) + (1 - p_t) * np.log((1 - p_t) / (1 - q_t))).mean()
    got = soft_kl(torch.tensor(LOGITS), torch.tensor(TEACHER), temperature, "sigmoid")
    assert got.item() == pytest.approx(expected, rel=1e-5)


def test_multiclass_kl_is_per_pixel():
    """(N, C, h, w): the softmax KL of each pixel, averaged over the pixels."""
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(2, 3, 4, 5))
    teacher = _softmax(rng.normal(size=(2, 3, 4, 5)))
    pixels = lambda a: torch.tensor(a.transpose(0, 2, 3, 1).reshape(-1, 3))  # noqa: E731
    expected = soft_kl(pixels(logits), pixels(teacher), 2.0, "softmax")
    torch.testing.assert_close(soft_kl(torch.tensor(logits), torch.tensor(teacher), 2.0, "softmax"), expected)


@pytest.mark.parametrize("activation", ["softmax", "sigmoid"])
@pytest.mark.parametrize("temperature", [1.0, 3.0])
def test_the_soft_gradient_moves_the_student_towards_the_teacher(activation, temperature):
    """d(T^2 KL)/dz = T (q_T - p_T) / count (Hinton et al. 2015); a step lowers the KL and brings q_T nearer p_T."""
    logits = torch.tensor(LOGITS, requires_grad=True)
    teacher = torch.tensor(TEACHER)
    loss = DistillationLoss(CrossEntropyLoss(), 0.0, temperature, activation)
    value = loss(logits, torch.tensor([0, 1]), teacher)
    value.backward()
    act = (lambda z: torch.softmax(z, 1)) if activation == "softmax" else torch.sigmoid
    q_t = act(logits.detach() / temperature)
    p_t = act((teacher.log() if activation == "softmax" else torch.logit(teacher)) / temperature)
    count = len(LOGITS) if activation == "softmax" else LOGITS.size
    torch.testing.assert_close(logits.grad, temperature * (q_t - p_t) / count)
    stepped = (logits - 0.5 * logits.grad).detach()
    after = loss(stepped, torch.tensor([0, 1]), teacher)
    assert after < value
    assert (act(stepped / temperature) - p_t).abs().sum() < (q_t - p_t).abs().sum()


def test_a_one_hot_teacher_at_alpha_0_is_the_hard_loss():
    """KL(one_hot || q) = CE: alpha 0, T 1 and a teacher equal to the labels train as the labels do (up to the clamp).
    The teacher equal to the student's own probabilities gives 0."""
    logits = torch.tensor(LOGITS)
    labels = torch.tensor([2, 1])
    loss = DistillationLoss(CrossEntropyLoss(), 0.0, 1.0, "softmax")
    ce = F.cross_entropy(logits, labels)
    torch.testing.assert_close(
        loss(logits, labels, F.one_hot(labels, 3).double()), ce, atol=1e-4, rtol=0, check_dtype=False
    )
    assert loss(logits, labels, torch.softmax(logits, 1)).item() == pytest.approx(0.0, abs=1e-6)
    assert loss(logits, labels, torch.tensor(TEACHER)).item() > 0.1  # another teacher: a real distance
    masks = (torch.rand(2, 1, 4, 4, generator=torch.Generator().manual_seed(0)) > 0.5).float()
    mask_logits = torch.randn(2, 1, 4, 4, generator=torch.Generator().manual_seed(1))
    sigmoid = DistillationLoss(SoftBCELoss(), 0.0, 1.0, "sigmoid")
    bce = F.binary_cross_entropy_with_logits(mask_logits, masks)
    torch.testing.assert_close(sigmoid(mask_logits, masks, masks), bce, atol=1e-4, rtol=0, check_dtype=False)
    assert sigmoid(mask_logits, masks, torch.sigmoid(mask_logits)).item() == pytest.approx(0.0, abs=1e-6)


def test_alpha_1_never_computes_the_soft_term(monkeypatch):
    def fail(*args, **kwargs):
        raise AssertionError("soft term computed")

    monkeypatch.setattr(distill, "soft_kl", fail)
    base = CrossEntropyLoss()
    logits, labels = torch.tensor(LOGITS), torch.tensor([0, 1])
    hard = base(logits, labels)
    loss = DistillationLoss(base, 1.0, 2.0, "softmax")
    assert loss(logits, labels, torch.tensor(TEACHER), hard_loss=hard) is hard
    assert "soft" not in loss.last_values
    assert DistillationLoss(base, 0.5, 2.0, "softmax")(logits, labels, None, hard_loss=hard) is hard  # validation
    with pytest.raises(ValueError, match="distill_alpha must be in"):
        DistillationLoss(base, 1.5)
    with pytest.raises(ValueError, match="do not fit the logits"):
        soft_kl(logits, torch.tensor(TEACHER[:, :2]))


# ------------------------------------------------------------------------------------------------ batch mixes


@pytest.mark.parametrize("kind", ["mixup", "cutmix", "fmix", "mixup_cutmix"])
def test_batch_mix_mixes_the_teacher_as_the_labels(kind):
    """A one-hot teacher mixed with the same partner and lambda is the mixed soft target; images are those of a call
    without a teacher (the same random draws)."""
    images, labels = torch.rand(5, 3, 8, 8), torch.tensor([0, 1, 2, 3, 4])
    mix = BatchMix(kind, 5, prob=1.0)
    np.random.seed(3)  # noqa: NPY002 - the mixes draw from numpy's global state
    plain_images, plain_targets = mix(images, labels)
    np.random.seed(3)  # noqa: NPY002 - the mixes draw from numpy's global state
    mixed, targets, teacher = mix(images, labels, F.one_hot(labels, 5).float())
    torch.testing.assert_close(mixed, plain_images)
    torch.testing.assert_close(teacher, targets)
    torch.testing.assert_close(targets, plain_targets)
    assert not torch.equal(teacher, F.one_hot(labels, 5).float())


@pytest.mark.parametrize(("kind", "multiclass"), [("cutmix", False), ("copy_paste", False), ("cutmix", True),
                                                  ("copy_paste", True)])  # fmt: skip
def test_segmentation_mix_moves_the_teacher_with_the_masks(kind, multiclass):
    gen = torch.Generator().manual_seed(0)
    images = torch.rand(4, 3, 16, 16, generator=gen)
    if multiclass:
        masks = torch.randint(0, 3, (4, 16, 16), generator=gen)
        teacher = F.one_hot(masks, 3).permute(0, 3, 1, 2).float()
    else:
        masks = (torch.rand(4, 2, 16, 16, generator=gen) > 0.6).float()
        teacher = masks.clone()
    mix = SegmentationMix(kind, multiclass, prob=1.0)
    np.random.seed(0)  # noqa: NPY002 - the mixes draw from numpy's global state
    mixed, mixed_masks, mixed_teacher = mix(images, masks, teacher)
    np.random.seed(0)  # noqa: NPY002 - the mixes draw from numpy's global state
    plain_images, plain_masks = mix(images, masks)
    torch.testing.assert_close(mixed, plain_images)
    torch.testing.assert_close(mixed_masks, plain_masks)
    expected = F.one_hot(mixed_masks, 3).permute(0, 3, 1, 2).float() if multiclass else mixed_masks
    torch.testing.assert_close(mixed_teacher, expected)
    assert not torch.equal(mixed_masks, masks)
    with pytest.raises(ValueError, match="teacher .* does not fit"):
        mix(images, masks, teacher[:, :, :8])


# ------------------------------------------------------------------------------------------------ soft masks


def _teacher_file(tmp_path: Path, rows: np.ndarray, ids: list[str]) -> TeacherProbs:
    np.save(tmp_path / "oof_probs.npy", rows)
    return TeacherProbs(tmp_path / "oof_probs.npy", ids, spatial=rows.ndim == 4)


def test_teacher_soft_masks_move_with_the_image(tmp_path):
    """The teacher row 0.1 + 0.8 x mask, through flips, a 90-degree rotation, a transpose and a resize, stays
    0.1 + 0.8 x the transformed mask; the image moved too (negative control: the untransformed row differs)."""
    data = make_demo(tmp_path / "data", n_train=3, n_test=1, height=32, width=48)
    preset = PRESETS["demo"]
    df = load_competition(preset, data)
    plain = SegmentationDataset(df, preset)
    rows = np.stack([0.1 + 0.8 * plain[i]["mask"].numpy() for i in range(len(df))]).astype(np.float32)
    teacher = _teacher_file(tmp_path, rows, plain.image_ids)
    transform = A.Compose([A.HorizontalFlip(p=1), A.VerticalFlip(p=1), A.RandomRotate90(p=1), A.Transpose(p=1),
                           A.Resize(16, 24, interpolation=1, mask_interpolation=0)])  # fmt: skip
    dataset = attach_teacher(SegmentationDataset(df, preset, transform), teacher)
    moved = 0
    for i in range(len(df)):
        item = dataset[i]
        assert item["teacher"].shape == item["mask"].shape == (4, 16, 24) and item["teacher"].dtype == torch.float32
        torch.testing.assert_close(item["teacher"], 0.1 + 0.8 * item["mask"])
        untransformed = torch.from_numpy(teacher.soft_mask(plain.image_ids[i], (16, 24)))
        moved += not torch.allclose(untransformed, item["teacher"], atol=0.05)
    assert moved == len(df)


def test_soft_mask_is_resized_to_the_image(tmp_path):
    """A (K, H, W) row at the scoring size becomes (K, h, w) at the image's size; uint8 rows are p x 255."""
    row = np.zeros((2, 10, 20), np.uint8)
    row[0, :, 10:] = 255
    row[1] = 51  # 0.2
    teacher = _teacher_file(tmp_path, row[None], ["a"])
    up = teacher.soft_mask("a", (40, 80))
    assert up.shape == (2, 40, 80) and up.dtype == np.float32
    np.testing.assert_allclose(up[1], 0.2, atol=1e-6)
    assert up[0, :, :36].max() == 0.0 and up[0, :, 44:].min() == 1.0
    assert teacher.soft_mask("a", (5, 10)).shape == (2, 5, 10)
    with pytest.raises(KeyError, match="no teacher row for image 'b'"):
        teacher.soft_mask("b", (5, 10))


def test_vector_teachers_reach_presence_items_and_workers_copy_no_rows(tmp_path):
    """A presence student's items get the teacher's (K,) row; a pickled teacher (a DataLoader worker's copy) carries
    the file name, not the memmap."""
    data = make_demo(tmp_path / "data", n_train=3, n_test=1, height=32, width=48)
    df = load_competition(PRESETS["demo"], data)
    rows = np.arange(12, dtype=np.float32).reshape(3, 4) / 12
    teacher = TeacherProbs(tmp_path / "oof_probs.npy", df["image_id"].tolist(), spatial=False)
    np.save(tmp_path / "oof_probs.npy", rows)
    dataset = attach_teacher(make_dataset(df, PRESETS["demo"].presence()), teacher)
    item = dataset[2]
    assert item["mask"].shape == (4,)
    torch.testing.assert_close(item["teacher"], torch.from_numpy(rows[2]))
    copy = pickle.loads(pickle.dumps(teacher))
    assert copy._probs is None and teacher._probs is not None
    np.testing.assert_array_equal(copy.vector(df["image_id"][1]), rows[1])


# ------------------------------------------------------------------------------------------------ the teacher's checks


def _fake_teacher(root: Path, name: str, folds_csv: Path, classes: int = 5, drop: int = 0, seed: int = 0) -> Path:
    """A gathered OOF by hand: Dirichlet rows (N, classes) float16 in the order of ``folds_csv`` (its first ``drop``
    rows left out of both), with a fold<k>/oof_ids.csv per fold."""
    folds = pd.read_csv(folds_csv, dtype={"image_id": str}).iloc[drop:]
    out = root / name
    out.mkdir(parents=True, exist_ok=True)
    write_csv(out / "folds.csv", folds, index=False)
    rng = np.random.default_rng(seed)
    np.save(out / "oof_probs.npy", rng.dirichlet(np.ones(classes), len(folds)).astype(np.float16))
    write_csv(out / "oof_ids.csv", folds[["image_id"]], index=False)
    for k, part in folds.groupby("fold"):
        (out / f"fold{k}").mkdir(exist_ok=True)
        write_csv(out / f"fold{k}" / "oof_ids.csv", part[["image_id"]], index=False)
    return out


def test_load_teacher_checks_the_oof(cassava_exp, caplog):  # noqa: F811
    root = Path(cassava_exp["artifacts_root"])
    cfg = cassava_config(cassava_exp, "student", distill_from="teacher_ok")
    _, train_df, _ = train.fold_tables(cfg)
    _fake_teacher(root, "teacher_ok", cfg.exp_dir / "folds.csv")
    teacher = load_teacher(cfg, train_df)
    first = train_df["image_id"].iloc[0]
    assert teacher.vector(first).shape == (5,) and teacher.vector(first).dtype == np.float32
    assert load_teacher(cassava_config(cassava_exp, "student"), train_df) is None
    blend = root / "blend"  # an ensemble (30_ensemble): its members' folds.csv say which model predicted each row
    blend.mkdir()
    for name in ("oof_probs.npy", "oof_ids.csv"):
        (blend / name).write_bytes((root / "teacher_ok" / name).read_bytes())
    write_json(blend / "weights.json", {"exps": ["teacher_ok"], "weights": [1.0]})
    assert load_teacher(cassava_config(cassava_exp, "student", distill_from="blend"), train_df).path.parent == blend

    _fake_teacher(root, "teacher_short", cfg.exp_dir / "folds.csv", drop=3)
    gone = pd.read_csv(cfg.exp_dir / "folds.csv", dtype=str)["image_id"].iloc[:3]
    gone = [i for i in gone if i in set(train_df["image_id"])]
    with pytest.raises(ValueError, match=rf"no row for {len(gone)} of fold 0's {len(train_df)} training images: "
                                         rf"{gone[0]}"):  # fmt: skip
        load_teacher(cassava_config(cassava_exp, "student", distill_from="teacher_short"), train_df)

    _fake_teacher(root, "teacher_wide", cfg.exp_dir / "folds.csv", classes=6)
    with pytest.raises(ValueError, match=r"rows are float16 \(6,\); the student \(preset 'cassava'.*needs \(5,\)"):
        load_teacher(cassava_config(cassava_exp, "student", distill_from="teacher_wide"), train_df)

    test_pred = _fake_teacher(root, "test_pred", cfg.exp_dir / "folds.csv")
    (test_pred / "folds.csv").unlink()
    with pytest.raises(ValueError, match="neither folds.csv.*not an out-of-fold prediction"):
        load_teacher(cassava_config(cassava_exp, "student", distill_from="test_pred"), train_df)

    shuffled = _fake_teacher(root, "shuffled", cfg.exp_dir / "folds.csv")
    ids = pd.read_csv(shuffled / "oof_ids.csv", dtype=str)
    write_csv(shuffled / "oof_ids.csv", ids.iloc[::-1], index=False)
    with pytest.raises(ValueError, match="not the gathered OOF.*another order"):
        load_teacher(cassava_config(cassava_exp, "student", distill_from="shuffled"), train_df)

    leaky = _fake_teacher(root, "leaky", cfg.exp_dir / "folds.csv")
    fold0 = pd.read_csv(leaky / "fold0" / "oof_ids.csv", dtype=str)
    other = pd.read_csv(leaky / "fold1" / "oof_ids.csv", dtype=str).iloc[:1]
    write_csv(leaky / "fold0" / "oof_ids.csv", pd.concat([fold0, other]), index=False)
    with pytest.raises(ValueError, match=rf"predicted 1 row\(s\).*fold 0 model trained on: {other['image_id'][0]}"):
        load_teacher(cassava_config(cassava_exp, "student", distill_from="leaky"), train_df)

    with pytest.raises(FileNotFoundError, match="nowhere.*oof_probs.npy not found.*20_oof"):
        load_teacher(cassava_config(cassava_exp, "student", distill_from="nowhere"), train_df)

    # a teacher of another task (its fold0/config.json), and a teacher with other folds (a warning)
    other_task = _fake_teacher(root, "seg_teacher", cfg.exp_dir / "folds.csv")
    TrainConfig.from_notebook(preset="demo").save(other_task / "fold0" / "config.json")
    with pytest.raises(ValueError, match=r"teacher learnt multilabel \['Stripes'.*student learns classification"):
        load_teacher(cassava_config(cassava_exp, "student", distill_from="seg_teacher"), train_df)
    resplit = _fake_teacher(root, "resplit", cfg.exp_dir / "folds.csv")
    folds = pd.read_csv(resplit / "folds.csv", dtype={"image_id": str})
    folds["fold"] = (folds["fold"] + 1) % 3
    write_csv(resplit / "folds.csv", folds, index=False)
    for k in range(3):
        write_csv(resplit / f"fold{k}" / "oof_ids.csv", folds[folds["fold"] == k][["image_id"]], index=False)
    with caplog.at_level(logging.WARNING, logger="kitlib.distill"):
        load_teacher(cassava_config(cassava_exp, "student", distill_from="resplit"), train_df)
    assert "differs from the student's" in caplog.text


def test_distill_parameters_are_checked(cassava_exp):  # noqa: F811
    with pytest.raises(ValueError, match="distill_alpha must be in"):
        cassava_config(cassava_exp, "student", distill_from="t", distill_alpha=1.2)
    with pytest.raises(ValueError, match="distill_temperature must be > 0"):
        cassava_config(cassava_exp, "student", distill_from="t", distill_temperature=0.0)
    with pytest.raises(ValueError, match="names this experiment"):
        cassava_config(cassava_exp, "student", distill_from="student")
    plain = cassava_config(cassava_exp, "student")
    assert plain.run_id() == cassava_config(cassava_exp, "student", distill_alpha=0.3).run_id()  # no teacher
    assert plain.run_id() != cassava_config(cassava_exp, "student", distill_from="t").run_id()


# ------------------------------------------------------------------------------------------------ training runs


def _same_run(a: dict, b: dict) -> bool:
    """Identical histories (but the time) and best.pt weights."""
    history = [pd.read_csv(Path(r["fold_dir"]) / "history.csv").drop(columns="time_s") for r in (a, b)]
    pd.testing.assert_frame_equal(*history)
    states = [torch.load(Path(r["fold_dir"]) / "best.pt", weights_only=True)["state_dict"] for r in (a, b)]
    return all(torch.equal(states[0][k], states[1][k]) for k in states[0])


def test_alpha_1_trains_as_the_hard_labels_classification(cassava_exp):  # noqa: F811
    root = Path(cassava_exp["artifacts_root"])
    _fake_teacher(root, "cls_teacher", root / "folds.csv", seed=1)
    common = dict(mix="cutmix", mix_prob=1.0)
    plain = train.train_fold(cassava_config(cassava_exp, "cls_plain", **common))
    same = train.train_fold(cassava_config(cassava_exp, "cls_alpha1", distill_from="cls_teacher", distill_alpha=1.0,
                                           distill_temperature=2.0, **common))  # fmt: skip
    assert _same_run(plain, same)
    soft = train.train_fold(cassava_config(cassava_exp, "cls_alpha0", distill_from="cls_teacher", distill_alpha=0.0,
                                           distill_temperature=2.0, **common))  # fmt: skip
    with pytest.raises(AssertionError):  # negative control: the teacher does change the training
        _same_run(plain, soft)
    assert "train_soft" in pd.read_csv(Path(soft["fold_dir"]) / "history.csv")


@pytest.fixture(scope="module")
def demo_teacher(demo_exp):  # noqa: F811
    """A 1-epoch demo experiment ``teacher`` on the demo's folds, every fold trained and gathered (20_oof)."""
    for fold in range(3):
        train.train_fold(demo_config(demo_exp, "teacher", epochs=1, fold=fold))
    gather_oof(Path(demo_exp["artifacts_root"]) / "teacher")
    return "teacher"


def test_alpha_1_trains_as_the_hard_labels_segmentation(demo_exp, demo_teacher, monkeypatch):  # noqa: F811
    """Flips and CutMix on: the teacher's soft masks reach every training batch, mixed, and change nothing."""
    seen = []

    def spy(loss_fn, outputs, target, teacher):
        if teacher is not None:
            seen.append(tuple(teacher.shape) == tuple(target.shape) and bool(teacher.max() <= 1))
        return distilled(loss_fn, outputs, target, teacher)

    distilled = engine._distillation_loss
    monkeypatch.setattr(engine, "_distillation_loss", spy)
    common = dict(epochs=1, augment="flips", mix="cutmix", mix_prob=1.0)
    plain = train.train_fold(demo_config(demo_exp, "seg_plain", **common))
    assert not seen
    same = train.train_fold(demo_config(demo_exp, "seg_alpha1", distill_from=demo_teacher, distill_alpha=1.0,
                                        **common))  # fmt: skip
    assert seen and all(seen)
    assert _same_run(plain, same)


def test_a_student_trains_through_the_notebook_parameters(demo_exp, demo_teacher):  # noqa: F811
    """The 10_train parameters cell as papermill runs it (its code, then the injected values) -> from_params ->
    train_fold: a segmentation student of the real teacher's gathered OOF at alpha 0.5, T 2."""
    cell = _cell_source(REPO / "notebooks" / "10_train.py")
    namespace: dict = {}
    exec(cell, namespace)  # noqa: S102 - the kit's own parameters cell
    values = {k: v for k, v in demo_config(demo_exp, "student").to_dict().items() if k in namespace}
    values.update(exp="student", epochs=1, distill_from=demo_teacher, distill_alpha=0.5, distill_temperature=2.0)
    injected = "# Parameters\n" + "".join(f"{k} = {v!r}\n" for k, v in values.items())  # papermill's cell
    exec(injected, namespace)  # noqa: S102
    namespace["In"] = ["", cell, injected]  # IPython's history of the executed cells
    cfg = TrainConfig.from_params(namespace)
    assert (cfg.distill_from, cfg.distill_alpha, cfg.distill_temperature) == (demo_teacher, 0.5, 2.0)
    out = train.train_fold(cfg)
    history = pd.read_csv(cfg.fold_dir / "history.csv")
    assert history["train_soft"].gt(0).all() and np.isfinite(history["train_loss"]).all()
    assert out["scores"] is not None and (cfg.fold_dir / "done.json").is_file()
