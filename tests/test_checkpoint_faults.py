"""Checkpoints verify their tensors; a corrupted latest state falls back to the previous one, both bad is one line."""

import os
import struct
import time

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("timm")

from animetagnet_train import checkpoint, config  # noqa: E402
from animetagnet_train.errors import TrainingError  # noqa: E402
from animetagnet_train.train import train  # noqa: E402

from train_helpers import ROOT, make_synthetic  # noqa: E402

SMOKE = ROOT / "configs" / "smoke.yaml"


def corrupt_tensor_bytes(path, offset_in_data=16):
    """Flip bytes inside the tensor data, leaving the safetensors header (and its metadata) intact."""
    raw = bytearray(path.read_bytes())
    (header_len,) = struct.unpack("<Q", raw[:8])
    pos = 8 + header_len + offset_in_data
    raw[pos:pos + 4] = bytes(b ^ 0xFF for b in raw[pos:pos + 4])
    path.write_bytes(bytes(raw))


def test_checksum_round_trip_and_detection(tmp_path):
    p = tmp_path / "w.safetensors"
    state = {"a": torch.arange(12, dtype=torch.float32).reshape(3, 4), "b": torch.ones(2, dtype=torch.bfloat16),
             "s": torch.tensor(3), "e": torch.zeros(0)}
    checkpoint.save_weights(p, state, {"k": 1})
    tensors, meta = checkpoint.load_weights(p)
    assert meta == {"k": 1} and torch.equal(tensors["a"], state["a"])
    corrupt_tensor_bytes(p)
    with pytest.raises(TrainingError, match="corrupted"):
        checkpoint.load_weights(p)
    # a file written before checksums existed still loads
    from safetensors.torch import save_file

    old = tmp_path / "old.safetensors"
    save_file({"a": state["a"]}, str(old), metadata={"json": "{}"})
    assert torch.equal(checkpoint.load_weights(old)[0]["a"], state["a"])


def test_stale_temp_files_of_a_killed_save_are_removed(tmp_path):
    p = tmp_path / "w.safetensors"
    stale = tmp_path / ".w.safetensors.abcd1234.tmp"
    fresh = tmp_path / ".w.safetensors.efgh5678.tmp"  # maybe a save in progress elsewhere: kept
    other = tmp_path / ".notes.txt.abcd1234.tmp"  # not a file we write here: kept
    for f in (stale, fresh, other):
        f.write_bytes(b"x")
    old = time.time() - 7200
    os.utime(stale, (old, old))
    os.utime(other, (old, old))
    checkpoint.save_weights(p, {"a": torch.ones(1)})
    assert not stale.exists() and fresh.exists() and other.exists()


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return make_synthetic(tmp_path_factory.mktemp("tiny"))


def test_corrupted_latest_falls_back_to_the_previous(tiny, tmp_path, capsys):
    base = ["train.epochs=3", "data.workers=1"]
    full = train(tiny, tmp_path / "full", config.load(SMOKE, base))
    run = tmp_path / "crash"
    crashed = train(tiny, run, config.load(SMOKE, base + ["train.checkpoint_every_steps=2", "train.stop_after_steps=5"]))
    assert crashed.stopped
    ckpt = run / "checkpoints"
    assert (ckpt / checkpoint.STATE_FILE).is_file() and (ckpt / checkpoint.PREV_STATE_FILE).is_file()
    corrupt_tensor_bytes(ckpt / checkpoint.STATE_FILE, offset_in_data=64)
    capsys.readouterr()
    resumed = train(tiny, run, config.load(run / "config.yaml", ["train.stop_after_steps=0"]), resume=True)
    err = capsys.readouterr().err
    assert "warning: last_state.safetensors is unusable (checkpoint is corrupted" in err and "prev_state" in err
    a = checkpoint.load_weights(tmp_path / "full" / "checkpoints" / "last.safetensors")[0]
    b = checkpoint.load_weights(ckpt / "last.safetensors")[0]
    for k in a:  # resuming from the earlier state is as exact as from the latest
        assert torch.equal(a[k], b[k]), k
    drop = ("images_per_s", "data_wait_share", "epoch_time_s", "val_time_s")
    strip = lambda h: [{k: v for k, v in r.items() if k not in drop} for r in h]  # noqa: E731
    assert strip(resumed.history) == strip(full.history)


def test_both_corrupted_is_one_line(tiny, tmp_path):
    run = tmp_path / "crash"
    train(tiny, run, config.load(SMOKE, ["train.epochs=2", "data.workers=1", "train.checkpoint_every_steps=2",
                                         "train.stop_after_steps=5"]))
    for name in (checkpoint.STATE_FILE, checkpoint.PREV_STATE_FILE):
        corrupt_tensor_bytes(run / "checkpoints" / name, offset_in_data=64)
    with pytest.raises(TrainingError) as exc:
        train(tiny, run, config.load(run / "config.yaml", ["train.stop_after_steps=0"]), resume=True)
    msg = str(exc.value)
    assert "no usable checkpoint" in msg and msg.count("checkpoint is corrupted") == 2 and "\n" not in msg
