"""A user's own competition as a preset file (kitlib.presets.load_preset_file): the fields checked one by one, the
COCO classes read from the label file, and the resolved preset saved in the stage configs so that a later stage
rebuilds it without the file."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import yaml

from kitlib.presets import PRESETS, PresetFileError, get_preset, is_preset_file, load_preset_file, preset_fields
from kitlib.recipes import TASK_DEFAULTS

#: The tiny COCO competition's preset file: no classes (read from train.json), no sample submission.
TINY_COCO_PRESET = {
    "name": "shapes",
    "task": "multiclass",
    "label_format": "coco_json",
    "label_file": "train.json",
    "image_dir": "images",
    "test_image_dir": "images",
    "test_file": "test.json",
    "submission_columns": ["image_id", "PredictionString"],
    "submission_format": "class_ids",
    "submission_size": [32, 32],
    "metric": "miou",
    "rle_order": "C",
    "description": "tiny COCO set of the tests: discs and squares on noise, 64x64",
}


def _polygon(kind: str, cx: int, cy: int, r: int) -> list[float]:
    if kind == "disc":
        angles = np.linspace(0, 2 * np.pi, 12, endpoint=False)
        return [float(v) for a in angles for v in (cx + r * np.cos(a), cy + r * np.sin(a))]
    return [float(v) for v in (cx - r, cy - r, cx + r, cy - r, cx + r, cy + r, cx - r, cy + r)]


def write_tiny_coco(root: Path, n_train: int = 8, n_test: int = 3, seed: int = 0) -> Path:
    """A COCO competition folder: 64x64 images under images/ with a bright disc (category 2) in the left half and a
    dark square (category 3) in the right half, an unused parent category (1, "shape", no annotation), train.json,
    and test.json listing the test images without annotations; no sample submission."""
    rng = np.random.default_rng(seed)
    categories = [{"id": 1, "name": "shape", "supercategory": "none"},
                  {"id": 2, "name": "disc", "supercategory": "shape"},
                  {"id": 3, "name": "square", "supercategory": "shape"}]  # fmt: skip
    images, annotations = [], []
    for i in range(n_train + n_test):
        name = f"img_{i:02d}.png"
        image = rng.integers(90, 140, (64, 64, 3), dtype=np.uint8)
        for kind, cat, colour, left in (("disc", 2, 235, 4), ("square", 3, 20, 36)):  # side by side, never overlapping
            cx, cy, r = left + int(rng.integers(10, 18)), int(rng.integers(12, 52)), int(rng.integers(6, 10))
            poly = _polygon(kind, cx, cy, r)
            cv2.fillPoly(image, [np.round(np.array(poly).reshape(-1, 2)).astype(np.int32)], (colour,) * 3)
            if i < n_train:
                annotations.append({"id": len(annotations) + 1, "image_id": i + 1, "category_id": cat,
                                    "segmentation": [poly], "area": float((2 * r) ** 2), "iscrowd": 0})  # fmt: skip
        (root / "images").mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(root / "images" / name), image)
        images.append({"id": i + 1, "file_name": name, "height": 64, "width": 64})
    (root / "train.json").write_text(json.dumps({"images": images[:n_train], "annotations": annotations,
                                                 "categories": categories}))  # fmt: skip
    (root / "test.json").write_text(json.dumps({"images": images[n_train:], "categories": categories}))
    return root


def write_preset(path: Path, **changes) -> Path:
    fields = {**TINY_COCO_PRESET, **changes}
    path.write_text(yaml.safe_dump({k: v for k, v in fields.items() if v is not None}, sort_keys=False))
    return path


# ----------------------------------------------------------------------------------------------------- the file


def test_a_preset_file_is_its_fields(tmp_path):
    path = write_preset(tmp_path / "shapes.yaml", classes=["Background", "disc", "square"])
    preset = get_preset(str(path))
    assert is_preset_file(str(path)) and not is_preset_file("coco")
    assert (preset.name, preset.task, preset.classes, preset.num_classes) == (
        "shapes",
        "multiclass",
        ("Background", "disc", "square"),
        3,
    )
    assert preset.submission_size == (32, 32) and preset.sample_submission is None and preset.rle_order == "C"
    assert preset.submission_columns == ("image_id", "PredictionString")
    # the name defaults to the file's stem; a built-in preset's own fields make a valid file too
    fields = {k: v for k, v in preset_fields(PRESETS["cassava"]).items() if k != "name"}
    (tmp_path / "leaves.yml").write_text(yaml.safe_dump(fields))
    assert load_preset_file(tmp_path / "leaves.yml") == PRESETS["cassava"].replace(name="leaves")


def test_a_relative_preset_file_is_read_from_the_repository_root(tmp_path, monkeypatch):
    monkeypatch.setenv("KIT_ROOT", str(tmp_path))
    (tmp_path / "competitions").mkdir()
    write_preset(tmp_path / "competitions" / "shapes.yaml")
    assert get_preset("competitions/shapes.yaml").name == "shapes"
    with pytest.raises(FileNotFoundError, match="preset file not found: .*nothere.yaml"):
        get_preset("competitions/nothere.yaml")


@pytest.mark.parametrize(
    ("changes", "match"),
    [({"clases": ["a"]}, r"unknown field 'clases' \(did you mean 'classes'\?\); fields: name, task"),
     ({"task": "segmentation"}, r"field 'task' = 'segmentation' is not one of \['binary', 'multilabel', 'multiclass'"),
     ({"label_format": "coco"}, r"field 'label_format' = 'coco' is not one of .* \(did you mean 'coco_json'\?\)"),
     ({"metric": "iou"}, r"field 'metric' = 'iou' is not one of .* \(did you mean 'miou'\?\)"),
     ({"rle_order": "row"}, r"field 'rle_order' = 'row' is not one of \['F', 'C'\]"),
     ({"submission_format": "csv"}, r"field 'submission_format' = 'csv' is not one of \['rle', 'class_ids', 'label'\]"),
     ({"submission_size": [32]}, r"field 'submission_size' = \[32\] \(list\) is not Optional\[tuple\[int, int\]\]"),
     ({"submission_size": [0, 32]}, r"field 'submission_size' = \[0, 32\] must be"),
     ({"image_size": [64, 0]}, r"field 'image_size' = \[64, 0\] must be \(height, width\) >= 1 pixel"),
     ({"image_size": [64]}, r"field 'image_size' = \[64\] \(list\) is not Optional\[tuple\[int, int\]\]"),
     ({"classes": "disc"}, r"field 'classes' = 'disc' \(str\) is not tuple\[str, \.\.\.\]"),
     ({"classes": ["Background", "disc", "disc"]}, r"class names repeat"),
     ({"task": "binary", "classes": ["a", "b"]}, r"a binary task has exactly one class"),
     ({"label_format": "label_csv"}, r"missing field\(s\) \['classes'\]"),
     ({"metric": None}, r"missing field\(s\) \['metric'\]"),
     ({"name": "coco"}, r"name 'coco' is a built-in preset's; give the competition a name of its own"),
     ({"source_task": "binary"}, r"unknown field 'source_task'")],
)  # fmt: skip
def test_a_wrong_field_or_value_fails_naming_it_and_the_file(tmp_path, changes, match):
    path = write_preset(tmp_path / "bad.yaml", **changes)
    with pytest.raises(PresetFileError, match=match) as err:
        get_preset(str(path))
    assert str(path) in str(err.value)


def test_a_preset_files_image_size_refuses_images_of_another_size(tmp_path):
    """A user's competition whose images all have one size says so in its preset file: ``image_size: [H, W]``."""
    from kitlib.formats import CompetitionDataError, load_competition

    data = write_tiny_coco(tmp_path / "data", n_train=2, n_test=1)
    classes = ["Background", "disc", "square"]
    preset = get_preset(str(write_preset(tmp_path / "shapes.yaml", classes=classes, image_size=[64, 64])))
    assert preset.image_size == (64, 64) and len(load_competition(preset, data)) == 2
    preset = get_preset(str(write_preset(tmp_path / "shapes.yaml", classes=classes, image_size=[64, 32])))
    with pytest.raises(CompetitionDataError, match=r"2 image\(s\) not of preset 'shapes''s image_size 64x32: .*"
                       r"img_00.png is 64x64, expected 64x32"):  # fmt: skip
        load_competition(preset, data)


def test_a_preset_file_that_is_not_a_mapping_of_fields(tmp_path):
    (tmp_path / "list.yaml").write_text("- task: binary\n")
    with pytest.raises(PresetFileError, match=r"list.yaml: a preset is a mapping of Preset fields, got list"):
        get_preset(str(tmp_path / "list.yaml"))
    (tmp_path / "broken.yaml").write_text("task: [binary\n")
    with pytest.raises(PresetFileError, match=r"broken.yaml: not valid YAML"):
        get_preset(str(tmp_path / "broken.yaml"))


# ------------------------------------------------------------------------------------------- in the stage configs


def test_stage_configs_resolve_the_coco_classes_and_save_the_preset(tmp_path):
    """classes left out: the background, then the annotated categories in id order (the unused parent "shape" is
    dropped); the fold's config.json keeps the fields, so it loads the same preset once the file is gone."""
    from kitlib.stages import EdaConfig, TrainConfig

    data = write_tiny_coco(tmp_path / "data", n_train=2, n_test=1)
    path = write_preset(tmp_path / "shapes.yaml")
    common = dict(preset=str(path), data_dir=str(data), artifacts_root=str(tmp_path / "artifacts"), exp="shapes")
    eda = EdaConfig.from_notebook(**common)
    assert eda.preset.classes == ("Background", "disc", "square") and eda.preset.name == "shapes"
    cfg = TrainConfig.from_notebook(**common)
    assert cfg.preset == eda.preset and cfg.loss == TASK_DEFAULTS["multiclass"]["loss"]
    assert cfg.recipe_source.startswith("the kit's defaults for a multiclass task")
    saved = cfg.save(tmp_path / "config.json", run_id="x")
    record = json.loads(saved.read_text())["preset_file"]
    assert record["param"] == str(path) and record["fields"]["classes"] == ["Background", "disc", "square"]
    path.unlink()
    (data / "train.json").unlink()
    loaded = TrainConfig.load(saved)
    assert loaded.preset == cfg.preset and loaded.extra["run_id"] == "x"
    with pytest.raises(FileNotFoundError, match="preset file not found"):
        TrainConfig.from_notebook(**common)


def test_a_changed_preset_file_keeps_the_saved_preset(tmp_path, caplog):
    from kitlib.stages import OofConfig

    path = write_preset(tmp_path / "shapes.yaml", classes=["Background", "disc", "square"])
    cfg = OofConfig.from_notebook(preset=str(path), data_dir=str(tmp_path))
    saved = cfg.save(tmp_path / "oof_config.json")
    write_preset(path, classes=["Background", "disc"])
    with caplog.at_level("WARNING"):
        assert OofConfig.load(saved).preset.classes == ("Background", "disc", "square")
    assert "changed since this config was saved" in caplog.text
    assert OofConfig.from_notebook(preset=str(path), data_dir=str(tmp_path)).preset.classes == ("Background", "disc")


@pytest.mark.parametrize(
    ("task", "changes", "loss"),
    [("classification", {"label_format": "label_csv", "classes": ["cat", "dog"], "metric": "accuracy",
                         "submission_format": "label"}, "ce"),
     ("multilabel", {"label_format": "image_label_csv", "classes": ["a", "b"], "metric": "dice",
                     "submission_format": "rle"}, "clouds_6th"),
     ("multiclass", {"classes": ["Background", "a"]}, "combo")],
)  # fmt: skip
def test_a_preset_file_trains_the_default_recipe_of_its_task(tmp_path, task, changes, loss):
    from kitlib.stages import TrainConfig
    from kitlib.train import build_loss

    path = write_preset(tmp_path / "mine.yaml", task=task, **changes)
    cfg = TrainConfig.from_notebook(preset=str(path), data_dir=str(tmp_path))
    assert cfg.loss == loss and cfg.model_preset.task == task
    assert build_loss(cfg) is not None
    if task == "classification":
        assert cfg.loss_kwargs == {} and cfg.normalization_name == cfg.model_name
