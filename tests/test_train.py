"""The training loop: end to end on digits, exact resume, checkpoints, failure modes and the CLI."""

import json

import pytest
import torch
from diffusers import DDPMPipeline
from PIL import Image
from safetensors.torch import load_file

from pudm_bench.cli.train import main
from pudm_bench.data.build import build_split
from pudm_bench.data.splits import get_split
from pudm_bench.errors import ConfigError, NonFiniteLossError
from pudm_bench.training import loop as train_module
from pudm_bench.training.batches import TrainingSet, batch_indices
from pudm_bench.training.checkpoint import latest_checkpoint, list_checkpoints
from pudm_bench.training.config import SampleConfig, TrainConfig
from pudm_bench.training.loop import train
from pudm_bench.training.losses import LABELED_SENSITIVE, UNLABELED
from pudm_bench.training.sampling import sample_images


@pytest.fixture(scope="module")
def digits_split():
    return build_split(get_split("digits_even"), seed=0)


def tiny_config(**changes) -> TrainConfig:
    base = dict(method="pu", beta=0.1, correction="max", steps=6, batch_size=32, lr=1e-3, warmup_steps=2,
                log_every=2, checkpoint_every=3, sample=SampleConfig(num_images=4, steps=3, batch_size=4))
    base.update(changes)
    return TrainConfig(**base)


def weights(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_training_set_mixes_u_and_s_with_roles(digits_split):
    data = TrainingSet.from_split(digits_split, "pu")
    assert len(data) == 600 + 60 + 60
    assert int((data.roles == UNLABELED).sum()) == 660
    assert int((data.roles == LABELED_SENSITIVE).sum()) == 60
    with pytest.raises(ConfigError, match="labeled_normal"):
        TrainingSet.from_split(digits_split, "pnu")


def test_batch_indices_shard_the_global_batch_across_ranks():
    full = batch_indices(100, 8, seed=3, step=5)
    shards = [batch_indices(100, 8, seed=3, step=5, rank=r, world_size=2) for r in range(2)]
    assert sorted(torch.cat(shards).tolist()) == sorted(full.tolist())
    assert set(shards[0].tolist()).isdisjoint(shards[1].tolist())
    # One epoch (12 full batches of 8 from 100) visits 96 distinct examples; the next epoch is reshuffled.
    epoch0 = torch.cat([batch_indices(100, 8, 3, s) for s in range(12)])
    assert len(set(epoch0.tolist())) == 96
    assert not torch.equal(batch_indices(100, 8, 3, 12), batch_indices(100, 8, 3, 0))


@pytest.mark.parametrize("ema", [None, 0.9])
def test_resume_is_exact(tmp_path, digits_split, ema):
    """6 steps straight == 3 steps, stop, resume to 6 (weights, optimizer, LR schedule, EMA, noise RNG)."""
    class Crash(train_module.Callback):
        def on_checkpoint(self, step, path):
            raise KeyboardInterrupt  # the process dies right after the step-3 checkpoint

    straight = train(tiny_config(ema_decay=ema), digits_split, tmp_path / "a")
    with pytest.raises(KeyboardInterrupt):
        train(tiny_config(ema_decay=ema), digits_split, tmp_path / "b", callbacks=[Crash()])
    resumed = train(tiny_config(ema_decay=ema), digits_split, tmp_path / "b")
    assert resumed.resumed_from == 3 and resumed.step == 6
    a, b = weights(straight.model), weights(resumed.model)
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    # Without resuming, a restart from step 0 on a different seed gives different weights (the check bites).
    fresh = train(tiny_config(ema_decay=ema, seed=1), digits_split, tmp_path / "b", resume=False)
    assert not torch.equal(weights(fresh.model)["conv_in.weight"], b["conv_in.weight"])


def test_checkpoints_are_safetensors_and_rotated(tmp_path, digits_split):
    train(tiny_config(steps=9, checkpoint_every=3), digits_split, tmp_path)
    names = [p.name for p in list_checkpoints(tmp_path)]
    assert names == ["step_00000006", "step_00000009"]  # the two newest are kept
    latest = latest_checkpoint(tmp_path)
    state = json.loads((latest / "state.json").read_text())
    assert state["step"] == 9 and state["config"]["split_fingerprint"] == digits_split.fingerprint
    assert "conv_in.weight" in load_file(latest / "model.safetensors")
    assert any(k.endswith(".exp_avg") for k in load_file(latest / "optimizer.safetensors"))


def test_resume_refuses_a_changed_config(tmp_path, digits_split):
    train(tiny_config(steps=3), digits_split, tmp_path)
    with pytest.raises(ConfigError, match="lr: 0.001 -> 0.002"):
        train(tiny_config(lr=2e-3), digits_split, tmp_path)
    # Extending the run (more steps) is allowed.
    assert train(tiny_config(steps=4), digits_split, tmp_path).resumed_from == 3


def test_corrupt_checkpoint_gives_clear_error(tmp_path, digits_split):
    train(tiny_config(steps=3), digits_split, tmp_path)
    (latest_checkpoint(tmp_path) / "model.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(ConfigError, match="unreadable.*--no-resume"):
        train(tiny_config(), digits_split, tmp_path)


def test_non_finite_loss_stops_without_checkpoint(tmp_path, digits_split, monkeypatch):
    def broken(eps_pred, eps):
        return (eps_pred - eps).pow(2).flatten(1).sum(1) * float("nan")

    monkeypatch.setattr(train_module, "denoising_error", broken)
    with pytest.raises(NonFiniteLossError, match="non-finite loss.*lower --lr"):
        train(tiny_config(), digits_split, tmp_path)
    assert list_checkpoints(tmp_path) == []


@pytest.mark.parametrize("method,beta", [("unsupervised", None), ("supervised", None), ("pu", 0.1)])
def test_each_method_reduces_its_training_loss(tmp_path, digits_split, method, beta):
    """A short run must actually learn: the mean loss of the last 10 steps is below that of the first 10."""
    log = []

    class Recorder(train_module.Callback):
        def on_log(self, step, metrics):
            log.append(metrics["loss"])

    config = tiny_config(method=method, beta=beta, correction="abs", steps=60, log_every=10, checkpoint_every=60)
    train(config, digits_split, tmp_path, callbacks=[Recorder()])
    assert len(log) == 6 and log[-1] < log[0]


def test_sampling_is_seeded_and_both_samplers_work(tmp_path, digits_split):
    result = train(tiny_config(steps=2), digits_split, tmp_path)
    one = sample_images(result.model, result.noise_scheduler, num_images=3, steps=4, seed=5)
    two = sample_images(result.model, result.noise_scheduler, num_images=3, steps=4, seed=5)
    other = sample_images(result.model, result.noise_scheduler, num_images=3, steps=4, seed=6)
    ddpm = sample_images(result.model, result.noise_scheduler, num_images=2, sampler="ddpm", steps=5, seed=5)
    assert one.dtype == torch.uint8 and one.shape == (3, 1, 8, 8)
    assert torch.equal(one, two) and not torch.equal(one, other)
    assert ddpm.shape == (2, 1, 8, 8)


def test_cli_end_to_end_writes_run_and_resumes(tmp_path, capsys):
    out = tmp_path / "run"
    args = ["--split", "digits_even", "--method", "pu", "--beta", "0.1", "--correction", "abs", "--steps", "4",
            "--batch-size", "32", "--log-every", "2", "--checkpoint-every", "2", "--num-samples", "4",
            "--sample-steps", "3", "--out", str(out), "--no-progress"]
    assert main(args) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["steps"] == 4 and metrics["resumed_from_step"] == 0
    assert metrics["split_fingerprint"] == json.loads((out / "config.json").read_text())["split"]["fingerprint"]
    assert {"loss", "positive_risk", "negative_risk", "negative_risk_below_zero_share"} <= set(metrics["final_train_metrics"])
    grid = Image.open(out / "samples.png")
    assert grid.size[0] >= 64  # 2x2 grid of upscaled 8x8 digits
    pipeline = DDPMPipeline.from_pretrained(out / "pipeline")
    assert pipeline.unet.config.sample_size == 8
    assert len((out / "train_log.jsonl").read_text().splitlines()) == 2
    # Running the same command with more steps resumes from the last checkpoint.
    longer = list(args)
    longer[longer.index("--steps") + 1] = "6"
    assert main(longer) == 0
    assert json.loads((out / "metrics.json").read_text())["resumed_from_step"] == 4


def test_cli_dry_run_prints_config_and_writes_nothing(tmp_path, capsys):
    out = tmp_path / "never"
    assert main(["--method", "pu", "--beta", "0.2", "--out", str(out), "--dry-run"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["config"]["beta"] == 0.2 and printed["run_dir"] == str(out.resolve())
    assert printed["split_file"].endswith("digits_even.yaml")
    assert not out.exists()


@pytest.mark.parametrize(
    "args,message",
    [
        (["--method", "unsupervised", "--beta", "0.1"], "does not use beta"),
        (["--method", "pu"], "beta=None is invalid"),
        (["--method", "pu", "--beta", "1.5"], "class prior must be in (0, 1)"),
        (["--split", "digits_evn", "--method", "unsupervised"], "did you mean 'digits_even'"),
        (["--method", "unsupervised", "--steps", "0"], "steps=0 is invalid"),
        (["--method", "unsupervised", "--lr", "3"], "lr=3.0 is invalid"),
        (["--method", "supervised", "--eta", "0.5"], "does not use eta"),
    ],
)
def test_cli_rejects_bad_input_with_one_line(tmp_path, capsys, args, message):
    out = tmp_path / "x"
    assert main([*args, "--out", str(out), "--dry-run"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and message in err and "\n" not in err
    assert not out.exists()


def test_fine_tuning_starts_from_a_pretrained_pipeline(tmp_path, digits_split):
    """--pretrained loads a diffusers pipeline directory (unet/ + scheduler/) or a bare UNet directory."""
    from pudm_bench.training.loop import save_pipeline

    base = train(tiny_config(steps=3), digits_split, tmp_path / "base")
    save_pipeline(base, tmp_path / "base")
    base.model.save_pretrained(tmp_path / "bare_unet")
    for source in (tmp_path / "base" / "pipeline", tmp_path / "bare_unet"):
        tuned = train(tiny_config(steps=2, lr=1e-9, warmup_steps=0, pretrained=str(source)), digits_split,
                      tmp_path / f"tuned_{source.name}")
        # With a negligible learning rate the fine-tuned weights stay those of the pretrained model.
        diff = max((a - b).abs().max().item() for a, b in zip(tuned.model.parameters(), base.model.parameters()))
        assert diff < 1e-4


@pytest.mark.parametrize(("method", "extra"), [
    ("unsupervised", {}), ("supervised", {}), ("pu", {"correction": "abs"}), ("pu", {"correction": "max"}),
])
def test_every_method_fine_tunes_a_saved_diffusers_pipeline(tmp_path, digits_split, method, extra):
    """The paper's fine-tuning path for every method: a DDPMPipeline written with save_pretrained (an unusual UNet,
    block widths 8/16, so it cannot be mistaken for a preset) is loaded, trained and saved again."""
    from diffusers import DDPMPipeline, DDPMScheduler, UNet2DModel

    from pudm_bench.training.loop import save_pipeline

    torch.manual_seed(0)
    unet = UNet2DModel(sample_size=8, in_channels=1, out_channels=1, layers_per_block=1, block_out_channels=(8, 16),
                       down_block_types=("DownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "UpBlock2D"),
                       norm_num_groups=8)
    DDPMPipeline(unet=unet, scheduler=DDPMScheduler(num_train_timesteps=1000)).save_pretrained(str(tmp_path / "ddpm"))
    before = weights(unet)
    beta = {"beta": 0.1} if method == "pu" else {"beta": None}
    result = train(tiny_config(method=method, steps=3, pretrained=str(tmp_path / "ddpm"), **beta, **extra),
                   digits_split, tmp_path / "run")
    assert tuple(result.model.config.block_out_channels) == (8, 16)
    after = weights(result.model)
    assert before.keys() == after.keys()
    assert any(not torch.equal(before[k], after[k]) for k in before)  # it trained from those weights
    save_pipeline(result, tmp_path / "run")
    assert DDPMPipeline.from_pretrained(tmp_path / "run" / "pipeline").unet.config.block_out_channels == [8, 16]


def test_pretrained_errors_are_clear(tmp_path, digits_split):
    with pytest.raises(ConfigError, match="nowhere does not exist"):
        train(tiny_config(pretrained=str(tmp_path / "nowhere")), digits_split, tmp_path / "a")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="could not load pretrained model"):
        train(tiny_config(pretrained=str(tmp_path / "empty")), digits_split, tmp_path / "a")
    from pudm_bench.training.models import build_model

    build_model("digits", 16, 1).save_pretrained(tmp_path / "wrong_size")
    with pytest.raises(ConfigError, match="takes 1x16px images but the split gives 1x8px"):
        train(tiny_config(pretrained=str(tmp_path / "wrong_size")), digits_split, tmp_path / "b")
