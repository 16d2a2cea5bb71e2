"""One reader validates dataset directories: the evaluator and the trainer say exactly what it says."""

from __future__ import annotations

import pytest

from animetagnet.datasets import DatasetError, open_dataset
from animetagnet.errors import UsageError
from animetagnet.evaluation.dataset import load_split

HEADER = "tag_id,name,category,count\n"


def _dataset(root, labels=HEADER + "0,smile,0,3\n", splits=("train",)):
    root.mkdir()
    (root / "selected_tags.csv").write_text(labels)
    for s in splits:
        (root / f"{s}.jsonl").write_text('{"id": "a", "image": "a.png", "tags": ["smile"]}\n')
    return root


def _broken(tmp_path):
    """(directory, what is wrong) for each way a directory can fail to be a dataset."""
    return [
        (tmp_path / "nope", "dataset directory not found"),
        (_empty(tmp_path / "empty"), "selected_tags.csv is missing"),
        (_dataset(tmp_path / "dup", labels=HEADER + "0,smile,0,3\n1,smile,0,1\n"), "duplicate tags"),
        (_dataset(tmp_path / "badcsv", labels="name\nsmile\n"), "needs the columns name and category"),
    ]


def _empty(root):
    root.mkdir()
    return root


def test_evaluator_and_core_give_one_error(tmp_path):
    for root, why in _broken(tmp_path):
        with pytest.raises(DatasetError, match=why) as core:
            open_dataset(root)
        with pytest.raises(DatasetError) as ev:
            load_split(root, "train")
        assert str(ev.value) == str(core.value)
        assert isinstance(ev.value, UsageError) and "\n" not in str(ev.value)


def test_missing_split_names_those_present(tmp_path):
    root = _dataset(tmp_path / "ds", splits=("train", "test"))
    with pytest.raises(DatasetError, match=r"val.jsonl is missing \(splits present: train, test\)"):
        load_split(root, "val")
    assert open_dataset(root).splits == ("train", "test")
    assert [r.tags for r in load_split(root, "test").records] == [["smile"]]


def test_trainer_reports_the_same_message(tmp_path):
    pytest.importorskip("torch")
    from animetagnet_train import data
    from animetagnet_train.errors import TrainingError

    for root, why in _broken(tmp_path):
        with pytest.raises(DatasetError) as core:
            open_dataset(root)
        with pytest.raises(TrainingError) as tr:
            data.open_dataset(root)
        assert str(tr.value) == str(core.value)
    no_train = _dataset(tmp_path / "val-only", splits=("val",))
    with pytest.raises(TrainingError, match="train.jsonl is missing"):
        data.open_dataset(no_train)
