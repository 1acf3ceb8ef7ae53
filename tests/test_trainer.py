"""The trainer: config checks, deterministic batches, checkpoint layout, kill-and-resume, DDP on gloo."""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from neuralmorph.errors import InputError
from neuralmorph.training import (StepBatchSampler, TrainerConfig, TrainingDiverged, global_batch_indices,
                                  latest_checkpoint, load_checkpoint, lr_factor, train)
from neuralmorph.training.trainer import KILL_HOOK_ENV

sys.path.insert(0, str(Path(__file__).parent))
from _tiny_family import TinyAutoencoder, TinyHeads  # noqa: E402

SCRIPT = Path(__file__).parent / "_tiny_family.py"
ROOT = Path(__file__).resolve().parents[1]


def _cfg(**kw) -> TrainerConfig:
    base = dict(max_steps=12, batch_size=8, lr=1e-2, warmup_steps=2, checkpoint_every=4, val_every=6, log_every=2,
                seed=3, tensorboard=False)
    base.update(kw)
    return TrainerConfig(**base)


def _model(**kw) -> TinyAutoencoder:
    torch.manual_seed(0)
    return TinyAutoencoder(**kw)


def _weights(run: Path, step: int) -> dict[str, torch.Tensor]:
    return load_file(str(run / "checkpoints" / f"step_{step:07d}" / "weights.safetensors"))


def _rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def _env() -> dict[str, str]:
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    env.pop(KILL_HOOK_ENV, None)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "src"), env.get("PYTHONPATH", "")])
    return env


# --- config and determinism ---------------------------------------------------------------------------

@pytest.mark.parametrize("field, value, flag", [
    ("max_steps", 0, "--max-steps"), ("batch_size", -1, "--batch-size"), ("lr", 0.0, "--lr"),
    ("lr", float("nan"), "--lr"), ("weight_decay", -1e-3, "--weight-decay"), ("lr_schedule", "linear", "--lr-schedule"),
    ("warmup_steps", -1, "--warmup-steps"), ("checkpoint_every", -5, "--checkpoint-every"), ("log_every", 0, "--log-every"),
    ("grad_clip", 0.0, "--grad-clip"), ("device", "gpu7", "--device"), ("keep_checkpoints", 0, "--keep-checkpoints"),
])
def test_config_validation(field, value, flag):
    with pytest.raises(InputError) as err:
        TrainerConfig(**{field: value})
    assert err.value.where == flag


def test_amp_refused_on_cpu():
    with pytest.raises(InputError, match="CUDA only"):
        TrainerConfig(amp=True, device="cpu")


def test_lr_schedule_warmup_then_cosine():
    cfg = TrainerConfig(max_steps=110, warmup_steps=10, lr_schedule="cosine")
    assert lr_factor(0, cfg) == pytest.approx(0.1)
    assert lr_factor(9, cfg) == pytest.approx(1.0)
    assert lr_factor(10, cfg) == pytest.approx(1.0)
    assert lr_factor(60, cfg) == pytest.approx(0.5)
    assert 0 < lr_factor(109, cfg) < 1e-3
    const = TrainerConfig(max_steps=110, warmup_steps=0, lr_schedule="constant")
    assert {lr_factor(s, const) for s in (0, 50, 109)} == {1.0}


def test_batch_order_is_a_pure_function_of_seed_and_step():
    n, b = 10, 4
    stream = np.concatenate([global_batch_indices(n, b, seed=5, step=s) for s in range(10)])
    for epoch in range(4):  # every epoch is a permutation: each item seen once
        assert sorted(stream[epoch * n:(epoch + 1) * n]) == list(range(n))
    assert not np.array_equal(global_batch_indices(n, b, 5, 0), global_batch_indices(n, b, 6, 0))
    # starting the sampler mid-run gives the same batches; two ranks' slices make the global batch
    full = list(StepBatchSampler(n, b, 5, 0, 10))
    assert list(StepBatchSampler(n, b, 5, 6, 10)) == full[6:]
    r0, r1 = list(StepBatchSampler(n, b, 5, 0, 10, 0, 2)), list(StepBatchSampler(n, b, 5, 0, 10, 1, 2))
    assert [x + y for x, y in zip(r0, r1)] == full
    with pytest.raises(InputError, match="split evenly"):
        StepBatchSampler(n, 5, 0, 0, 1, 0, 2)


# --- a run's files ------------------------------------------------------------------------------------

def test_train_writes_checkpoints_logs_and_config(tmp_path):
    out = tmp_path / "run"
    model = _model()
    data = TinyHeads(24)
    before = TinyHeads(24)[0]["vertices"]
    loss0 = model.training_loss({"vertices": data.vertices}, 0)[0].item()
    trained = train(model, data, _cfg(keep_checkpoints=2, tensorboard=True), out, val_set=TinyHeads(6, start=24),
                    run_config={"family": "tiny", "data": tmp_path / "data"}, progress=False)
    assert trained is model
    assert torch.equal(before, data[0]["vertices"])

    root = out / "checkpoints"
    assert sorted(p.name for p in root.iterdir()) == ["latest", "step_0000008", "step_0000012"]  # keep 2
    assert (root / "latest").read_text().strip() == "step_0000012"
    assert latest_checkpoint(out) == root / "step_0000012"
    weights, opt, state = load_checkpoint(root / "step_0000012")
    assert set(weights) == set(model.state_dict())
    assert all(torch.equal(weights[k], v) for k, v in model.state_dict().items())
    assert {k for k in opt if k.startswith("state.")} >= {"state.0.exp_avg", "state.0.exp_avg_sq", "state.0.step"}
    assert {"rng.0.torch", "rng.0.numpy", "rng.0.python"} <= set(opt)
    assert state["step"] == 12 and state["world_size"] == 1
    assert state["scheduler"]["base_lrs"] == [1e-2]
    assert state["optimizer"]["param_groups"][0]["betas"] == [0.9, 0.999]
    for f in ("weights.safetensors", "optimizer.safetensors"):  # safetensors: 8-byte length + JSON header
        head = (root / "step_0000012" / f).read_bytes()[:9]
        assert head[8:9] == b"{"
    assert not list(tmp_path.rglob("*.pt")) and not list(tmp_path.rglob("*.pkl"))

    rc = json.loads((out / "run_config.json").read_text())
    assert rc["trainer"]["max_steps"] == 12 and rc["run"] == {"family": "tiny", "data": str(tmp_path / "data")}

    rows = _rows(out / "metrics.csv")
    assert [int(r["step"]) for r in rows] == [2, 4, 6, 8, 10, 12]
    assert {"lr", "loss", "mse", "grad_norm", "val/mse", "val/mean_err"} <= set(rows[0])
    assert rows[2]["val/mse"] and not rows[0]["val/mse"]     # validated at 6 and 12
    assert float(rows[-1]["loss"]) < float(rows[0]["loss"])
    try:
        import tensorboard  # noqa: F401
    except ImportError:
        pass
    else:
        assert list((out / "tensorboard").glob("events.out.tfevents.*"))
    assert model.training_loss({"vertices": data.vertices}, 0)[0].item() < 0.6 * loss0


def test_val_and_test_sets_are_logged_under_their_own_names(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    val, test = TinyHeads(6, start=24), TinyHeads(5, start=30)   # two disjoint held-out sets
    out = tmp_path / "run"
    model = train(_model(), TinyHeads(24), _cfg(tensorboard=True), out, val_set=val, test_set=test, progress=False)
    rows = _rows(out / "metrics.csv")
    assert {"val/mse", "val/mean_err", "test/mse", "test/mean_err"} <= set(rows[0])
    assert [int(r["step"]) for r in rows if r["val/mse"]] == [6, 12]     # every val_every steps and at the end
    assert [int(r["step"]) for r in rows if r["test/mse"]] == [12]       # the test split only once, at the end
    # each column holds its own set's score under the final weights (one batch each: batch_size 8)
    with torch.no_grad():
        on_val = model.validation_metrics({"vertices": val.vertices})
        on_test = model.validation_metrics({"vertices": test.vertices})
    for name in ("mse", "mean_err"):
        assert float(rows[-1][f"val/{name}"]) == pytest.approx(on_val[name], rel=1e-5)
        assert float(rows[-1][f"test/{name}"]) == pytest.approx(on_test[name], rel=1e-5)
    assert on_val["mse"] != pytest.approx(on_test["mse"], rel=1e-3)
    events = EventAccumulator(str(out / "tensorboard"))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    assert {"train/loss", "val/mse", "test/mse"} <= tags, tags
    assert [e.step for e in events.Scalars("test/mse")] == [12]


def test_validation_does_not_change_the_training_trajectory(tmp_path):
    a = train(_model(noise=0.1), TinyHeads(24), _cfg(), tmp_path / "a", progress=False)
    b = train(_model(noise=0.1), TinyHeads(24), _cfg(val_every=1), tmp_path / "b", val_set=TinyHeads(6, start=24),
              test_set=TinyHeads(5, start=30), progress=False)
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))


def test_resume_refuses_a_different_config_and_fresh_run_refuses_existing(tmp_path):
    out = tmp_path / "run"
    train(_model(), TinyHeads(24), _cfg(max_steps=4), out, run_config={"family": "tiny", "latent": 4}, progress=False)
    with pytest.raises(InputError, match="pass --resume"):
        train(_model(), TinyHeads(24), _cfg(max_steps=4), out, progress=False)
    with pytest.raises(InputError) as err:
        train(_model(), TinyHeads(24), _cfg(max_steps=4, lr=5e-3), out, resume=True,
              run_config={"family": "tiny", "latent": 8}, progress=False)
    msg = str(err.value)
    assert "trainer.lr: saved 0.01, now 0.005" in msg and "run.latent: saved 4, now 8" in msg
    assert "max_steps" not in msg
    # the saved config untouched; a finished run resumes to the same weights without training
    assert json.loads((out / "run_config.json").read_text())["trainer"]["lr"] == 1e-2
    done = _weights(out, 4)
    m = train(_model(), TinyHeads(24), _cfg(max_steps=4), out, resume=True,
              run_config={"family": "tiny", "latent": 4, "resume": True}, progress=False)
    assert all(torch.equal(done[k], v) for k, v in m.state_dict().items())


def test_diverging_loss_stops_with_a_clear_error(tmp_path):
    with pytest.raises(TrainingDiverged, match="loss became nan by step 4"):
        train(_model(nan_at_step=2), TinyHeads(24), _cfg(), tmp_path / "run", progress=False)


# --- kill and resume, DDP -----------------------------------------------------------------------------

def test_kill_after_checkpoint_then_resume_is_bit_identical(tmp_path):
    args = [sys.executable, str(SCRIPT), "--steps", "16", "--checkpoint-every", "4", "--noise", "0.1", "--val", "--test"]
    env = _env()
    subprocess.run(args + ["--out", str(tmp_path / "full")], env=env, check=True, capture_output=True)
    killed = subprocess.run(args + ["--out", str(tmp_path / "cut")], env={**env, KILL_HOOK_ENV: "8"}, capture_output=True)
    assert killed.returncode == -9, killed.stderr.decode()[-2000:]
    assert latest_checkpoint(tmp_path / "cut").name == "step_0000008"
    assert not (tmp_path / "cut" / "checkpoints" / "step_0000012").exists()
    subprocess.run(args + ["--out", str(tmp_path / "cut"), "--resume"], env=env, check=True, capture_output=True)
    full, resumed = _weights(tmp_path / "full", 16), _weights(tmp_path / "cut", 16)
    assert full.keys() == resumed.keys()
    for k in full:
        assert torch.equal(full[k], resumed[k]), k
    # the metrics of the resumed run read like the uninterrupted one
    assert (tmp_path / "full" / "metrics.csv").read_text() == (tmp_path / "cut" / "metrics.csv").read_text()


def test_ddp_two_cpu_processes_match_one_process(tmp_path):
    common = ["--steps", "6", "--checkpoint-every", "3", "--batch", "8", "--val", "--test"]
    env = _env()
    ddp = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--standalone",
                          str(SCRIPT), "--out", str(tmp_path / "ddp"), *common],
                         env=env, capture_output=True, timeout=120)
    assert ddp.returncode == 0, ddp.stderr.decode()[-3000:]
    subprocess.run([sys.executable, str(SCRIPT), "--out", str(tmp_path / "one"), *common], env=env, check=True,
                   capture_output=True)
    ckpts = sorted(p.name for p in (tmp_path / "ddp" / "checkpoints").iterdir())
    assert ckpts == ["latest", "step_0000003", "step_0000006"]       # one writer: no duplicates, no leftovers
    _, opt, state = load_checkpoint(tmp_path / "ddp" / "checkpoints" / "step_0000006")
    assert state["world_size"] == 2 and {"rng.0.torch", "rng.1.torch"} <= set(opt)
    a, b = _weights(tmp_path / "ddp", 6), _weights(tmp_path / "one", 6)
    for k in a:
        assert torch.allclose(a[k].float(), b[k].float(), atol=1e-6, rtol=1e-5), k
    rows_a = _rows(tmp_path / "ddp" / "metrics.csv")
    rows_b = _rows(tmp_path / "one" / "metrics.csv")
    assert [r["step"] for r in rows_a] == [r["step"] for r in rows_b]
    assert float(rows_a[-1]["val/mse"]) == pytest.approx(float(rows_b[-1]["val/mse"]), rel=1e-5)
    assert float(rows_a[-1]["test/mse"]) == pytest.approx(float(rows_b[-1]["test/mse"]), rel=1e-5)  # 3 + 2 heads


class _PreviewAutoencoder(TinyAutoencoder):
    """Adds the optional preview hook: a mesh of the reconstruction for TensorBoard."""

    def preview(self, batch):
        v = self(batch["vertices"][:1]).view(1, -1, 3)
        return {"val/reconstruction": (v, torch.tensor([[[0, 1, 2], [1, 2, 3]]]))}


def test_mesh_previews_reach_tensorboard_without_changing_training(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    cfg = _cfg(tensorboard=True, val_every=6)
    plain = train(_model(noise=0.1), TinyHeads(24), cfg, tmp_path / "a", val_set=TinyHeads(6, start=24), progress=False)
    torch.manual_seed(0)
    with_preview = _PreviewAutoencoder(noise=0.1)
    with_preview.load_state_dict(_model(noise=0.1).state_dict())
    with_preview = train(with_preview, TinyHeads(24), cfg, tmp_path / "b", val_set=TinyHeads(6, start=24), progress=False)
    for k, v in plain.state_dict().items():
        assert torch.equal(v, with_preview.state_dict()[k]), k
    events = EventAccumulator(str(tmp_path / "b" / "tensorboard"), size_guidance={"tensors": 0})
    events.Reload()
    tags = events.Tags()["tensors"]
    assert any(t.startswith("val/reconstruction") for t in tags), tags
    steps = {e.step for t in tags if t.startswith("val/reconstruction") for e in events.Tensors(t)}
    assert steps == {6, 12}


class _ImagePreviewAutoencoder(TinyAutoencoder):
    """Previews the reconstruction both as an image (4, 4, 3) in [0, 1] and as a mesh."""

    def preview(self, batch):
        v = self(batch["vertices"][:1])
        return {"preview/picture": torch.sigmoid(v[0]).view(4, 4, 3),
                "preview/mesh": (v, torch.tensor([[[0, 1, 2], [1, 2, 3]]]))}


def _image_steps(run: Path, tag: str) -> list[int]:
    """The steps of `tag`'s images in run/tensorboard (each (4, 4) pixels), as TensorBoard reads them."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run / "tensorboard"), size_guidance={"images": 0, "tensors": 0})
    events.Reload()
    assert tag in events.Tags()["images"], events.Tags()
    images = events.Images(tag)
    assert {(e.width, e.height) for e in images} == {(4, 4)}
    return [e.step for e in images]


@pytest.mark.parametrize("with_val, steps", [(True, [6, 12]), (False, [4, 8, 12])])
def test_image_previews_reach_tensorboard_without_changing_training(tmp_path, with_val, steps):
    """With a val set: its first item at each validation; without: the first training item at each checkpoint."""
    pytest.importorskip("tensorboard")
    cfg = _cfg(tensorboard=True)
    val = TinyHeads(6, start=24) if with_val else None
    plain = train(_model(noise=0.1), TinyHeads(24), cfg, tmp_path / "a", val_set=val, progress=False)
    torch.manual_seed(0)
    with_preview = train(_ImagePreviewAutoencoder(noise=0.1), TinyHeads(24), cfg, tmp_path / "b", val_set=val,
                         progress=False)
    for k, v in plain.state_dict().items():
        assert torch.equal(v, with_preview.state_dict()[k]), k
    assert _image_steps(tmp_path / "b", "preview/picture") == steps


def test_train_item_previews_keep_resume_bit_identical(tmp_path):
    """A run without a val set, cut after its step-8 checkpoint (later checkpoint removed) and resumed, ends
    with the uninterrupted run's weights and shows each checkpoint's preview once."""
    pytest.importorskip("tensorboard")
    cfg = _cfg(tensorboard=True)

    def run(out: Path, resume: bool = False) -> torch.nn.Module:
        torch.manual_seed(0)
        return train(_ImagePreviewAutoencoder(noise=0.1), TinyHeads(24), cfg, out, resume=resume, progress=False)

    full = run(tmp_path / "full")
    cut = tmp_path / "cut"
    run(cut)
    root = cut / "checkpoints"
    shutil.rmtree(root / "step_0000012")
    (root / "latest").write_text("step_0000008\n")
    # TensorBoard reads event files in name order, and a name is time (whole seconds).host.pid.counter, the
    # counter unpadded: in one process the resumed run's file could sort first; a later second cannot.
    time.sleep(1.05)
    resumed = run(cut, resume=True)
    for k, v in full.state_dict().items():
        assert torch.equal(v, resumed.state_dict()[k]), k
    assert _image_steps(cut, "preview/picture") == [4, 8, 12]
