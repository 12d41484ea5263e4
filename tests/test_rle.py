"""kitlib.rle: round trips, hand-computed strings, every malformed input, and the real rows."""

from __future__ import annotations

import math
import re

import numpy as np
import pandas as pd
import pytest

from kitlib.rle import _join_ints, is_empty_rle, rle_area, rle_decode, rle_encode, rle_parse


def _reference_encode(mask: np.ndarray, order: str) -> str:
    """The canonical Kaggle-kernel mask2rle (with the order made explicit), kept as the reference."""
    pixels = mask.flatten(order=order)
    pixels = np.concatenate([[0], pixels, [0]])
    runs = np.where(pixels[1:] != pixels[:-1])[0] + 1
    runs[1::2] -= runs[::2]
    return " ".join(str(x) for x in runs)


# (mask rows, order, expected string): hand-computed.
HAND_CASES = [
    ([[0, 0], [0, 0]], "F", ""),
    ([[1, 1], [1, 1]], "F", "1 4"),
    ([[1, 0], [1, 0]], "F", "1 2"),
    ([[1, 0], [1, 0]], "C", "1 1 3 1"),
    ([[0, 1, 1], [1, 0, 1]], "F", "2 2 5 2"),
    ([[0, 1, 1], [1, 0, 1]], "C", "2 3 6 1"),
    ([[0, 0, 0], [0, 0, 1]], "F", "6 1"),
    ([[1]], "C", "1 1"),
]


@pytest.mark.parametrize(("rows", "order", "expected"), HAND_CASES)
def test_encode_hand_cases(rows, order, expected):
    mask = np.array(rows, dtype=np.uint8)
    assert rle_encode(mask, order=order) == expected
    back = rle_decode(expected, mask.shape, order=order)
    np.testing.assert_array_equal(back, mask)
    assert back.dtype == np.uint8


@pytest.mark.parametrize("order", ["F", "C"])
@pytest.mark.parametrize("shape", [(1, 1), (1, 7), (7, 1), (5, 8), (64, 96), (31, 17)])
@pytest.mark.parametrize("kind", ["random", "empty", "full", "border", "blocks"])
def test_round_trip(order, shape, kind):
    rng = np.random.default_rng(hash((order, shape, kind)) % 2**32)
    h, w = shape
    if kind == "random":
        mask = (rng.random(shape) < 0.5).astype(np.uint8)
    elif kind == "empty":
        mask = np.zeros(shape, np.uint8)
    elif kind == "full":
        mask = np.ones(shape, np.uint8)
    elif kind == "border":  # touches every edge and both corners of the flat order
        mask = np.zeros(shape, np.uint8)
        mask[0, :] = mask[-1, :] = mask[:, 0] = mask[:, -1] = 1
    else:
        mask = np.zeros(shape, np.uint8)
        mask[h // 3 : h - 1, w // 4 :] = 1
    rle = rle_encode(mask, order=order)
    assert rle == _reference_encode(mask, order)
    np.testing.assert_array_equal(rle_decode(rle, shape, order=order), mask)
    assert rle_area(rle, shape) == int(mask.sum())


@pytest.mark.parametrize("order", ["F", "C"])
def test_encode_any_layout_and_dtype(order):
    rng = np.random.default_rng(0)
    mask = rng.random((40, 50)) < 0.3
    expected = _reference_encode(mask.astype(np.uint8), order)
    for variant in (
        mask,
        mask.astype(np.uint8) * 255,
        np.asfortranarray(mask),
        mask[:, ::-1][:, ::-1],
        mask.T.T,
        np.ascontiguousarray(mask.T).T,
        mask.astype(np.float32),
    ):
        assert rle_encode(variant, order=order) == expected
    # a decoded (Fortran-ordered) mask encodes back through the fast path
    assert rle_encode(rle_decode(expected, mask.shape, order), order) == expected


@pytest.mark.parametrize("empty", [None, float("nan"), "", "   ", "-1", pd.NA])
def test_decode_empty_values(empty):
    out = rle_decode(empty, (3, 4))
    assert out.shape == (3, 4) and out.sum() == 0 and out.dtype == np.uint8
    assert is_empty_rle(empty)


def test_encode_empty_token_configurable():
    assert rle_encode(np.zeros((2, 2)), empty="-1") == "-1"
    assert rle_encode(np.zeros((2, 2))) == ""
    assert rle_decode("-1", (2, 2), order="C").sum() == 0
    # a custom empty token list: "-1" is then a malformed string (start < 1, odd tokens)
    with pytest.raises(ValueError, match="odd number of tokens"):
        rle_decode("-1", (2, 2), empty_tokens=("",))


def test_adjacent_runs_decode():
    """Two runs that touch (end of one = start of the next) are legal and decode to one region."""
    np.testing.assert_array_equal(rle_decode("1 2 3 2", (1, 5), order="C"), [[1, 1, 1, 1, 0]])


BAD = [
    ("1 2 3", "odd number of tokens"),
    ("1 2 x 4", "token 2 is not an integer: 'x'"),
    ("1 2.5", "token 1 is not an integer"),
    ("1,2", "not an integer"),
    ("0 2", "start < 1"),
    ("-3 2", "start < 1"),
    ("1 0", "length < 1"),
    ("5 -1", "length < 1"),
    ("11 3", "ends past the image of 12 pixels"),
    ("12 2", "ends past the image"),
    ("5 2 1 2", "out of order or overlapping"),
    ("1 4 3 2", "out of order or overlapping"),
]


@pytest.mark.parametrize(("rle", "message"), BAD)
def test_bad_input_raises(rle, message):
    with pytest.raises(ValueError, match=message.replace(".", r"\.").replace("(", r"\(")):
        rle_decode(rle, (3, 4))
    with pytest.raises(ValueError):
        rle_parse(rle, (3, 4))


# Malformed tokens the numeric parser used to accept or misreport (issue 15, item 11): each error names the token
# as written. (rle, shape, what the message must contain)
BAD_TOKENS = [
    ("1 99999999999999999999999", (3, 4), "token 1 (the length of run 0) is '99999999999999999999999'"),
    ("1 99999999999999999999999", (3, 4), "too large for the image of 12 pixels"),
    ("99999999999999999999 5", (3, 4), "token 0 (the start of run 0) is '99999999999999999999'"),
    ("9223372036854775807 5", (3, 4), "too large for the image"),
    ("18446744073709551617 2", (3, 4), "'18446744073709551617'"),
    ("1 4611686018427387905", (3, 4), "is '4611686018427387905': too large"),  # 2**62 + 1
    ("1 4611686018427387904", (3, 4), "RLE run 0 (start 1, length 4611686018427387904) ends past the image"),
    ("1 2 13 1", (3, 4), "RLE run 1 (start 13, length 1) ends past the image of 12 pixels"),
    ("+1 2", (3, 4), "token 0 has a sign: '+1'"),
    ("1 +2", (3, 4), "token 1 has a sign: '+2'"),
    ("-1 2", (3, 4), "token 0 (the start of run 0) is '-1': start < 1"),
    ("1 2 3 -1", (3, 4), "token 3 (the length of run 1) is '-1': length < 1"),
    ("1.0 2", (3, 4), "token 0 is not an integer: '1.0'"),
    ("0x1 2", (3, 4), "token 0 is not an integer: '0x1'"),
    ("1e3 2", (3, 4), "token 0 is not an integer: '1e3'"),
    ("1_0 2", (3, 4), "token 0 is not an integer: '1_0'"),
    ("1 2 \u0661 2", (3, 4), "token 2 is not an integer"),  # an Arabic-Indic digit: int() would take it
    ("1\xa02", (3, 4), "token 0 is not an integer: '1\\xa02'"),  # a no-break space: str.split() splits there
    ("1 -", (3, 4), "token 1 is not an integer: '-'"),
    ("1 " + "9" * 5000, (3, 4), "'" + "9" * 40 + "'... (5000 characters): too large"),  # past int()'s 4,300 digits
]


@pytest.mark.parametrize(("rle", "shape", "message"), BAD_TOKENS)
def test_bad_tokens_named_as_written(rle, shape, message):
    for fn in (lambda: rle_decode(rle, shape), lambda: rle_parse(rle, shape), lambda: rle_area(rle, shape)):
        with pytest.raises(ValueError, match=re.escape(message)):
            fn()


@pytest.mark.parametrize("rle", [" 1 2", "1 2 ", "\t1  2\n", "1\t2\r\n", "\x0b1\x0c2 "])
def test_ascii_whitespace_is_a_separator(rle):
    np.testing.assert_array_equal(rle_decode(rle, (3, 4), order="C"), [[1, 1, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0]])


def test_leading_zeros_are_plain_digits():
    """Leading zeros are digits (the canonical decoder reads them too), even past int64's 19 digits."""
    assert rle_area("01 00000000000000000000000000002", (3, 4)) == 2


def test_join_ints_matches_str_join():
    """The vectorised formatter of rle_encode against Python's str, at every digit-group boundary."""
    edges = [1, 9, 10, 99, 100, 999, 1000, 9999, 10000, 10001, 99999, 100000, 99999999, 10**8, 10**8 + 1]
    edges += [10**12 + 7, 10**16, 2**62, 2**63 - 1]
    rng = np.random.default_rng(0)
    for values in (edges, edges[::-1], [1], rng.integers(1, 3_000_000, 5000), rng.integers(1, 10**15, 500)):
        v = np.asarray(values, dtype=np.int64)
        assert _join_ints(v) == " ".join(map(str, v.tolist()))


def test_bad_arguments():
    with pytest.raises(ValueError, match="order must be"):
        rle_decode("1 1", (2, 2), order="X")
    with pytest.raises(ValueError, match="shape must be"):
        rle_decode("1 1", (0, 2))
    with pytest.raises(ValueError, match="2-D"):
        rle_encode(np.zeros((2, 2, 2)))
    with pytest.raises(TypeError, match="string or a missing value"):
        rle_decode(12, (2, 2))
    assert math.isnan(float("nan"))


def test_real_clouds_rows(clouds_dir):
    df = pd.read_csv(clouds_dir / "train_small.csv")
    by_key = dict(zip(df.Image_Label, df.EncodedPixels, strict=True))
    # pixel counts computed independently with the canonical loop decoder over runs
    expected_area = {}
    for label in ("Fish", "Flower"):
        tokens = [int(t) for t in by_key[f"0011165.jpg_{label}"].split()]
        expected_area[label] = sum(tokens[1::2])
    assert expected_area == {"Fish": 932312, "Flower": 1156107}
    for label in ("Fish", "Flower"):
        rle = by_key[f"0011165.jpg_{label}"]
        mask = rle_decode(rle, (1400, 2100), order="F")
        assert mask.shape == (1400, 2100)
        assert int(mask.sum()) == expected_area[label]
        assert rle_encode(mask, order="F") == rle
        assert rle_encode(np.ascontiguousarray(mask), order="F") == rle
    for label in ("Gravel", "Sugar"):
        assert is_empty_rle(by_key[f"0011165.jpg_{label}"])


def test_real_dacon_rows(dacon_dir):
    df = pd.read_csv(dacon_dir / "train.csv")
    expected = {"TRAIN_0000": 24514, "TRAIN_0001": 65478, "TRAIN_0002": 27649}
    for img_id, area in expected.items():
        rle = df.set_index("img_id").loc[img_id, "mask_rle"]
        assert sum(int(t) for t in rle.split()[1::2]) == area  # independent count
        mask = rle_decode(rle, (1024, 1024), order="C")
        assert int(mask.sum()) == area
        assert rle_encode(mask, order="C", empty="-1") == rle
    truncated = df.set_index("img_id").loc["TRAIN_0003", "mask_rle"]
    with pytest.raises(ValueError, match="odd number of tokens"):
        rle_decode(truncated, (1024, 1024), order="C")
