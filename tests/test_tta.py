"""kitlib.tta: every pair inverts, an identity model is unchanged, a position-dependent model proves the deaugment,
probabilities (not logits) are averaged, the model's mode is restored."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from kitlib.tta import CROP_FRACTION, TRANSFORMS, TTA, predict_tta, tta_names, tta_pairs

#: TTAs made of invertible (dihedral) transforms: the ones a segmentation model can use.
DIHEDRAL_TTA = sorted(n for n, names in TTA.items() if all(TRANSFORMS[t][1] is not None for t in names))
CLASSIFIER_ONLY_TTA = sorted(set(TTA) - set(DIHEDRAL_TTA))
INVERTIBLE = sorted(n for n, (_, d) in TRANSFORMS.items() if d is not None)


class Identity(nn.Module):
    """output = input; records the mode it ran in."""

    def forward(self, x):
        self.ran_training = self.training
        return x


def _ramp(h: int, w: int) -> torch.Tensor:
    """(h, w) float32 map 0, 1, 2, ... in row-major order, scaled into [0, 1): every pixel different."""
    return torch.arange(h * w, dtype=torch.float32).reshape(h, w) / (h * w)


class PlusMap(nn.Module):
    """output = input + R, R = ``_ramp`` over the input's own grid: not equivariant to any transform. Under a
    transform t the deaugmented pass is x + t^-1(R of t's grid): the average over a TTA is x plus the mean of those
    maps; x itself comes back in place only if every deaugment inverts its augment."""

    def forward(self, x):
        return x + _ramp(*x.shape[-2:])


#: numpy inverses of the transforms (t^-1), written independently of kitlib.tta.
NUMPY_INVERSE = {
    "identity": lambda m: m,
    "hflip": lambda m: m[:, ::-1],
    "vflip": lambda m: m[::-1, :],
    "rot180": lambda m: m[::-1, ::-1],
    "rot90": lambda m: np.rot90(m, -1),  # undo a counter-clockwise quarter turn
    "rot270": lambda m: np.rot90(m, 1),
    "transpose": lambda m: m.T,
    "antitranspose": lambda m: m[::-1, ::-1].T,
}
TRANSPOSING = {"rot90", "rot270", "transpose", "antitranspose"}


def _images(n=2, c=3, h=4, w=4, seed=0):
    return torch.rand(n, c, h, w, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("name", INVERTIBLE)
@pytest.mark.parametrize("shape", [(4, 4), (3, 5)])
def test_each_pair_inverts(name, shape):
    x = _images(h=shape[0], w=shape[1])
    augment, deaugment = TRANSFORMS[name]
    assert torch.equal(deaugment(augment(x)), x)


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("hflip", [[3, 2, 1], [6, 5, 4]]),
        ("vflip", [[4, 5, 6], [1, 2, 3]]),
        ("rot180", [[6, 5, 4], [3, 2, 1]]),
        ("rot90", [[3, 6], [2, 5], [1, 4]]),  # counter-clockwise, as np.rot90
        ("rot270", [[4, 1], [5, 2], [6, 3]]),
        ("transpose", [[1, 4], [2, 5], [3, 6]]),
        ("antitranspose", [[6, 3], [5, 2], [4, 1]]),
    ],
)
def test_augment_hand_cases(name, expected):
    x = torch.tensor([[1, 2, 3], [4, 5, 6]]).reshape(1, 1, 2, 3)
    assert TRANSFORMS[name][0](x).reshape(len(expected), -1).tolist() == expected


def test_registry():
    assert [len(tta_pairs(n)) for n in ("none", "hflip", "vflip", "flips", "d4")] == [1, 2, 2, 4, 8]
    x = _images(h=3, w=5)
    d4 = {tuple(a(x).flatten().tolist()) for a, _ in tta_pairs("d4")}
    assert len(d4) == 8  # 8 distinct images: the whole dihedral group
    assert tta_names(["identity", "transpose"]) == ("identity", "transpose")
    with pytest.raises(KeyError, match=r"unknown TTA 'd8'.*'d4'"):
        tta_pairs("d8")
    with pytest.raises(KeyError, match=r"unknown transform.*'flip'.*'hflip'"):
        tta_pairs(["identity", "flip"])
    with pytest.raises(ValueError, match="at least one"):
        tta_pairs([])


@pytest.mark.parametrize("tta", DIHEDRAL_TTA)
@pytest.mark.parametrize("shape", [(4, 4), (4, 6)])
def test_identity_model(tta, shape):
    x = _images(h=shape[0], w=shape[1])
    probs = predict_tta(Identity(), x, tta=tta, activation="none")
    torch.testing.assert_close(probs, x, rtol=0, atol=1e-6)
    torch.testing.assert_close(predict_tta(Identity(), x, tta=tta), torch.sigmoid(x), rtol=0, atol=1e-6)
    assert probs.dtype == torch.float32


@pytest.mark.parametrize("tta", DIHEDRAL_TTA)
@pytest.mark.parametrize("shape", [(4, 4), (3, 5)])
def test_deaugment_undoes_augment(tta, shape):
    """A model that is not equivariant: the result is x + the mean of R over the inverse transforms, computed
    independently with numpy; x itself comes back in place (a wrong deaugment would move its pixels)."""
    h, w = shape
    x = _images(h=h, w=w)
    maps = [NUMPY_INVERSE[n](_ramp(*((w, h) if n in TRANSPOSING else (h, w))).numpy()) for n in TTA[tta]]
    expected = x + torch.from_numpy(np.mean(maps, axis=0))
    torch.testing.assert_close(predict_tta(PlusMap(), x, tta=tta, activation="none"), expected, rtol=0, atol=1e-6)


def test_probabilities_not_logits_are_averaged():
    x = torch.zeros(1, 1, 1, 2)
    model = PlusMap()  # logits [0, 0.5] on the original pass, [0.5, 0] after deaugmenting the flipped one
    probs = predict_tta(model, x, tta="hflip", activation="sigmoid")
    r = torch.tensor([0.0, 0.5])
    expected = (torch.sigmoid(r) + torch.sigmoid(r.flip(0))) / 2
    torch.testing.assert_close(probs.flatten(), expected)
    logits = predict_tta(model, x, tta="hflip", activation="none").flatten()
    assert not torch.allclose(torch.sigmoid(logits), expected)  # the average of logits would differ


def test_softmax_over_channels():
    x = _images(c=4, h=3, w=5)
    probs = predict_tta(Identity(), x, tta="d4", activation="softmax")
    torch.testing.assert_close(probs.sum(1), torch.ones(2, 3, 5))
    torch.testing.assert_close(probs, torch.softmax(x, 1))


class SegWithHead(nn.Module):
    """(mask logits = input, class logits = the top-left pixel): the head is deliberately not invariant."""

    def forward(self, x):
        return x, x[:, :, 0, 0]


class Classifier(nn.Module):
    """Class logits (N, C) = the top-left pixel of each channel."""

    def forward(self, x):
        return x[:, :, 0, 0]


def test_tuple_output():
    x = _images(h=3, w=5)
    mask_probs, cls_probs = predict_tta(SegWithHead(), x, tta="flips", activation="none")
    torch.testing.assert_close(mask_probs, x)
    corners = (x[:, :, 0, 0] + x[:, :, 0, -1] + x[:, :, -1, 0] + x[:, :, -1, -1]) / 4
    torch.testing.assert_close(cls_probs, corners)  # averaged as is, never deaugmented
    mask_probs, cls_probs = predict_tta(SegWithHead(), x, tta="hflip", activation="softmax", cls_activation="sigmoid")
    torch.testing.assert_close(mask_probs, torch.softmax(x, 1))
    torch.testing.assert_close(cls_probs, (torch.sigmoid(x[:, :, 0, 0]) + torch.sigmoid(x[:, :, 0, -1])) / 2)


def test_classifier_output():
    x = _images(h=3, w=5)
    probs = predict_tta(Classifier(), x, tta="flips", activation="none")
    assert probs.shape == (2, 3)
    torch.testing.assert_close(probs, (x[:, :, 0, 0] + x[:, :, 0, -1] + x[:, :, -1, 0] + x[:, :, -1, -1]) / 4)
    probs = predict_tta(Classifier(), x, tta="d4", activation="softmax")  # transposed (5, 3) inputs are fine
    torch.testing.assert_close(probs.sum(1), torch.ones(2))


@pytest.mark.parametrize("training", [True, False])
def test_mode_restored_and_no_grad(training):
    model = Identity().train(training)
    x = _images().requires_grad_(True)
    probs = predict_tta(model, x, tta="hflip")
    assert model.ran_training is False
    assert model.training is training
    assert not probs.requires_grad


def test_mode_restored_after_an_error():
    class Broken(nn.Module):
        def forward(self, x):
            raise RuntimeError("boom")

    model = Broken().train()
    with pytest.raises(RuntimeError, match="boom"):
        predict_tta(model, _images(), tta="d4")
    assert model.training


def test_input_not_modified():
    x = _images()
    before = x.clone()
    predict_tta(Identity(), x, tta="flips", activation="none")
    assert torch.equal(x, before)


def test_fixed_size_model_under_d4_non_square_is_a_clear_error():
    class FixedSize(nn.Module):
        def forward(self, x):
            return nn.functional.interpolate(x, size=(4, 6))

    x = _images(h=4, w=6)
    predict_tta(FixedSize(), x, tta="flips")  # flips keep the shape: fine
    with pytest.raises(ValueError, match=r"TTA transform 'rot90'.*geometry"):
        predict_tta(FixedSize(), x, tta="d4")


def test_bad_inputs():
    with pytest.raises(ValueError, match=r"\(N, C, H, W\)"):
        predict_tta(Identity(), torch.zeros(3, 4, 4))
    with pytest.raises(KeyError, match=r"unknown activation 'relu'.*'sigmoid'"):
        predict_tta(Identity(), _images(), activation="relu")
    with pytest.raises(KeyError, match="unknown activation"):
        predict_tta(SegWithHead(), _images(), cls_activation="tanh")

    class ThreeD(nn.Module):
        def forward(self, x):
            return x[:, 0]

    with pytest.raises(ValueError, match=r"output 0 under TTA transform 'identity' has shape \(2, 4, 4\)"):
        predict_tta(ThreeD(), _images())

    class DictOut(nn.Module):
        def forward(self, x):
            return {"mask": x}

    with pytest.raises(TypeError, match="tensor or a tuple"):
        predict_tta(DictOut(), _images())


def test_dihedral_and_classifier_sets():
    assert DIHEDRAL_TTA == ["d4", "flips", "hflip", "none", "vflip"]
    assert {"five_crop", "center_crop", "multiscale"} <= set(CLASSIFIER_ONLY_TTA)


def test_crops_by_hand():
    """On an 8 x 8 ramp, the 7 x 7 corner crops are the corner windows resized back (bilinear) to 8 x 8."""
    x = _ramp(8, 8).reshape(1, 1, 8, 8)
    side = round(8 * CROP_FRACTION)
    windows = {"crop_tl": x[..., :side, :side], "crop_br": x[..., -side:, -side:]}
    for name in ("crop_tl", "crop_br"):
        expected = nn.functional.interpolate(windows[name], size=(8, 8), mode="bilinear", align_corners=False)
        torch.testing.assert_close(TRANSFORMS[name][0](x), expected)
    # the top-left crop of a ramp starts at 0, the bottom-right one ends at the last value
    assert TRANSFORMS["crop_tl"][0](x)[..., 0, 0].item() == 0.0
    assert TRANSFORMS["crop_br"][0](x)[..., -1, -1].item() == pytest.approx(x[..., -1, -1].item())
    assert TRANSFORMS["scale_1.125"][0](x).shape[-2:] == (9, 9)
    assert TRANSFORMS["scale_0.875"][0](x).shape[-2:] == (7, 7)


class MeanClassifier(nn.Module):
    """Class logits (N, C) = the mean of each channel: a global-pooling classifier."""

    def forward(self, x):
        return x.mean((-2, -1))


@pytest.mark.parametrize("tta", CLASSIFIER_ONLY_TTA)
def test_classifier_tta_on_a_constant_image_is_exact(tta):
    """A constant image is the same under any crop or rescale: every view gives the plain prediction."""
    x = torch.rand(2, 3, 1, 1).expand(2, 3, 8, 8).contiguous()
    probs = predict_tta(MeanClassifier(), x, tta=tta, activation="softmax")
    torch.testing.assert_close(probs, torch.softmax(x.mean((-2, -1)), 1))


def test_five_crop_is_the_mean_of_the_five_views():
    x = _images(h=8, w=8)
    views = [MeanClassifier()(TRANSFORMS[f"crop_{w}"][0](x)) for w in ("tl", "tr", "bl", "br", "c")]
    probs = predict_tta(MeanClassifier(), x, tta="five_crop", activation="none")
    torch.testing.assert_close(probs, torch.stack(views).mean(0))
    assert not torch.allclose(probs, MeanClassifier()(x))  # the crops are real: they change the prediction


@pytest.mark.parametrize("tta", CLASSIFIER_ONLY_TTA)
def test_crops_on_masks_are_a_clear_error(tta):
    with pytest.raises(ValueError, match=r"cannot be undone on mask outputs"):
        predict_tta(Identity(), _images(h=8, w=8), tta=tta)


def test_plain_weight():
    x = _images(h=3, w=5)
    plain = Classifier()(x)
    flipped = x[:, :, 0, -1]
    probs = predict_tta(Classifier(), x, tta="hflip", activation="none", plain_weight=0.75)
    torch.testing.assert_close(probs, 0.75 * plain + 0.25 * flipped)
    even = predict_tta(Classifier(), x, tta="hflip", activation="none", plain_weight=0.5)
    torch.testing.assert_close(even, predict_tta(Classifier(), x, tta="hflip", activation="none"))
    masks, cls = predict_tta(SegWithHead(), x, tta="hflip", activation="none", plain_weight=1.0)
    torch.testing.assert_close(cls, plain)
    torch.testing.assert_close(masks, x)
    with pytest.raises(ValueError, match="plain_weight"):
        predict_tta(Classifier(), x, tta="none", plain_weight=0.5)
    with pytest.raises(ValueError, match="plain_weight"):
        predict_tta(Classifier(), x, tta="five_crop", plain_weight=0.5)  # no identity pass
    with pytest.raises(ValueError, match="plain_weight"):
        predict_tta(Classifier(), x, tta="hflip", plain_weight=1.5)
