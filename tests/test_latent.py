"""Latent text-to-image PU-DM (``--model sd``) on a tiny randomly initialised Stable Diffusion pipeline: training in
full and with LoRA, saving, reloading with diffusers' ``from_pretrained`` and sampling; PU folders with prompts;
and one smoke sweep through Ray Train, Optuna and MLflow."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from safetensors.torch import load_file

from pudm_bench.data.build import build_split
from pudm_bench.data.splits import get_split, load_split_file
from pudm_bench.errors import ConfigError
from pudm_bench.training.config import SampleConfig, TrainConfig
from tests.helpers import assert_rate_is_a_scored_count, write_pu_folder

ROOT = Path(__file__).resolve().parents[1]
PROMPT_LOW = "a handwritten digit from zero to four"


@pytest.fixture(scope="module")
def tiny_sd(tmp_path_factory) -> Path:
    from pudm_bench.training.latent import tiny_pipeline

    return tiny_pipeline(tmp_path_factory.mktemp("sd") / "tiny-sd")


@pytest.fixture(scope="module")
def cond_split():
    return build_split(get_split("digits_even_cond"))


def sd_config(tiny_sd: Path, **changes) -> TrainConfig:
    values = dict(split="digits_even_cond", method="pu", beta=0.2, model="sd", pretrained=str(tiny_sd), steps=6,
                  batch_size=16, lr=1e-3, warmup_steps=1, log_every=3, checkpoint_every=3,
                  sample=SampleConfig(num_images=4, steps=3))
    values.update(changes)
    return TrainConfig(**values)


def unet_weights(unet) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in unet.state_dict().items()}


def test_tiny_pipeline_is_a_stable_diffusion_pipeline(tiny_sd):
    from diffusers import AutoencoderKL, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextModel

    pipe = StableDiffusionPipeline.from_pretrained(str(tiny_sd))
    assert isinstance(pipe.unet, UNet2DConditionModel) and isinstance(pipe.vae, AutoencoderKL)
    assert isinstance(pipe.text_encoder, CLIPTextModel)
    assert pipe.tokenizer("a photo").input_ids[0] == pipe.tokenizer.bos_token_id
    images = pipe("a photo", num_inference_steps=2, height=8, width=8, output_type="pt",
                  generator=torch.Generator().manual_seed(0)).images
    assert images.shape == (1, 3, 8, 8) and torch.isfinite(images).all()


def test_full_fine_tuning_trains_saves_reloads_and_samples(tiny_sd, cond_split, tmp_path):
    from diffusers import StableDiffusionPipeline

    from pudm_bench.training.batches import TrainingSet
    from pudm_bench.training.denoiser import load_generator
    from pudm_bench.training.loop import save_pipeline, train

    config = sd_config(tiny_sd)
    base = unet_weights(StableDiffusionPipeline.from_pretrained(str(tiny_sd)).unet)
    result = train(config, cond_split, tmp_path / "run")
    assert result.step == 6 and result.denoiser.conditional  # two prompts, PU risk per condition
    assert np.isfinite(result.metrics["loss"]) and "negative_risk" in result.metrics
    # Every image trains with its condition's prompt.
    data = TrainingSet.from_split(cond_split, "pu")
    assert torch.equal(data.prompt_ids, data.conditions)
    save_pipeline(result, tmp_path / "run")
    pipe = StableDiffusionPipeline.from_pretrained(str(tmp_path / "run" / "pipeline"))
    reloaded = unet_weights(pipe.unet)
    trained = unet_weights(result.model)
    assert reloaded.keys() == trained.keys() == base.keys()
    assert all(torch.equal(reloaded[k], trained[k].cpu()) for k in trained)
    assert any(not torch.equal(reloaded[k], base[k]) for k in base)  # it trained
    # diffusers samples the saved pipeline; our generator gives the same images before and after reloading.
    images = pipe(PROMPT_LOW, num_inference_steps=2, height=8, width=8, output_type="pt",
                  generator=torch.Generator().manual_seed(0)).images
    assert images.shape == (1, 3, 8, 8) and torch.isfinite(images).all()
    before = result.generator(6, steps=3, seed=2)
    after = load_generator(tmp_path / "run" / "pipeline", config, cond_split, "cpu")(6, steps=3, seed=2)
    assert torch.equal(before.images, after.images) and torch.equal(before.conditions, after.conditions)
    # Grey 8x8 digits in, grey 8x8 digits out (the VAE sees RGB; the referee the split's format).
    assert before.images.shape == (6, 1, 8, 8) and before.images.dtype == torch.uint8
    assert before.conditions.tolist() == [0, 0, 0, 0, 1, 1]  # U's normal images: 61% low


def test_lora_trains_only_adapters_and_reloads_onto_the_base(tiny_sd, cond_split, tmp_path):
    from diffusers import StableDiffusionPipeline

    from pudm_bench.training.latent import load_trained
    from pudm_bench.training.loop import save_pipeline, train

    config = sd_config(tiny_sd, lora_rank=4, guidance_scale=2.0)
    base = unet_weights(StableDiffusionPipeline.from_pretrained(str(tiny_sd)).unet)
    result = train(config, cond_split, tmp_path / "run")
    after = unet_weights(result.model)
    lora_keys = [k for k in after if "lora" in k]
    # The base UNet is frozen (peft keeps a wrapped layer's own weight as <layer>.base_layer.<name>).
    wrapped = {k: k if k in after else k.replace(".weight", ".base_layer.weight").replace(".bias", ".base_layer.bias")
               for k in base}
    assert lora_keys and all(torch.equal(after[wrapped[k]], base[k]) for k in base)
    assert any(after[k].abs().sum() > 0 for k in lora_keys if "lora_B" in k)  # B starts at zero: it moved
    checkpoint = load_file(tmp_path / "run" / "checkpoints" / "step_00000006" / "model.safetensors")
    assert set(checkpoint) == {k for k, p in result.model.named_parameters() if p.requires_grad}
    assert all("lora" in k for k in checkpoint)
    path = save_pipeline(result, tmp_path / "run")
    assert (path / "pytorch_lora_weights.safetensors").is_file()
    assert json.loads((path / "base_model.json").read_text())["base_model"] == str(tiny_sd)
    # from_pretrained(base) + load_lora_weights predicts the same noise as the trained model.
    pipe = load_trained(tmp_path / "run" / "pipeline")
    z = torch.randn(2, 4, 4, 4, generator=torch.Generator().manual_seed(0))
    text = torch.randn(2, 16, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        mine = result.model(z, torch.tensor([10, 500]), encoder_hidden_states=text).sample
        theirs = pipe.unet(z, torch.tensor([10, 500]), encoder_hidden_states=text).sample
    assert torch.allclose(mine, theirs, atol=1e-5)
    drawn = result.generator(3, steps=2, seed=0)  # classifier-free guidance on
    assert drawn.images.shape == (3, 1, 8, 8)


def test_lora_run_resumes_exactly(tiny_sd, cond_split, tmp_path):
    from pudm_bench.training.loop import Callback, train

    class Crash(Callback):
        def on_checkpoint(self, step, path):
            raise KeyboardInterrupt  # the process dies right after the step-3 checkpoint

    whole = train(sd_config(tiny_sd, lora_rank=2), cond_split, tmp_path / "whole")
    with pytest.raises(KeyboardInterrupt):
        train(sd_config(tiny_sd, lora_rank=2), cond_split, tmp_path / "halves", callbacks=[Crash()])
    resumed = train(sd_config(tiny_sd, lora_rank=2), cond_split, tmp_path / "halves")
    assert resumed.resumed_from == 3
    one, two = unet_weights(whole.model), unet_weights(resumed.model)
    assert all(torch.equal(one[k], two[k]) for k in one)
    fresh = train(sd_config(tiny_sd, lora_rank=2, seed=1), cond_split, tmp_path / "other")
    assert not all(torch.equal(one[k], unet_weights(fresh.model)[k]) for k in one)  # the check bites


def test_train_cli_writes_a_reloadable_sd_run_and_evaluate_scores_it(tiny_sd, tmp_path, digits_referee):
    from pudm_bench.cli.train import main
    from pudm_bench.scoring.evaluate import EvalConfig, evaluate_run

    out = tmp_path / "cli"
    code = main(["--split", "digits_even_cond", "--method", "pu", "--beta", "0.1", "--model", "sd", "--pretrained",
                 str(tiny_sd), "--lora-rank", "4", "--steps", "4", "--batch-size", "16", "--num-samples", "4",
                 "--sample-steps", "2", "--out", str(out), "--no-progress"])
    assert code == 0 and (out / "samples.png").is_file()
    saved = json.loads((out / "config.json").read_text())["config"]
    assert saved["model"] == "sd" and saved["lora_rank"] == 4
    metrics = evaluate_run(out, EvalConfig(num_samples=20, sample_steps=2, diversity="off", fid="off"))
    assert metrics["num_samples/low"] + metrics["num_samples/high"] == 20
    assert_rate_is_a_scored_count(metrics, 20)


def test_conditions_need_their_own_prompts_for_sd(tiny_sd, tmp_path):
    from pudm_bench.data.splits import parse_split
    from pudm_bench.training.loop import train

    data = yaml.safe_load(Path(get_split("digits_even_cond").source).read_text())
    data["conditions"] = {name: entry["classes"] for name, entry in data["conditions"].items()}  # no prompts
    split = build_split(parse_split(data))
    with pytest.raises(ConfigError, match="conditions low, high need different prompts for model=sd"):
        train(sd_config(tiny_sd), split, tmp_path / "run")
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("changes, message", [
    (dict(pretrained=None), "model=sd needs pretrained"),
    (dict(model="unet", lora_rank=4, pretrained=None), "lora_rank=4 applies to model=sd only"),
    (dict(model_preset="tiny"), "model_preset='tiny' applies to model=unet only"),
    (dict(guidance_scale=0.5), "guidance_scale=0.5 is invalid"),
    (dict(lora_rank=0), "lora_rank=0 is invalid"),
])
def test_bad_sd_configs_are_one_line_errors(tiny_sd, changes, message):
    with pytest.raises(ConfigError, match=message) as info:
        sd_config(tiny_sd, **changes)
    assert "\n" not in str(info.value)


def test_pipeline_checks_before_training(tiny_sd, tmp_path, monkeypatch):
    from pudm_bench.training import latent

    latent.check_pipeline(str(tiny_sd), 8)
    with pytest.raises(ConfigError, match="image_size=6 does not fit pipeline .* divisible by 4"):
        latent.check_pipeline(str(tiny_sd), 6)
    with pytest.raises(ConfigError, match="could not read Stable Diffusion pipeline"):
        latent.check_pipeline(str(tmp_path), 8)
    real_import = __import__

    def no_peft(name, *args, **kwargs):
        if name == "peft":
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr("builtins.__import__", no_peft)
    with pytest.raises(ConfigError, match=r"--model sd needs peft; install the extra: pip install 'pudm_bench\[sd\]'"):
        latent.require_extra()


# ------------------------------------------------------------------------------------------------- PU folders




def pu_split_file(folder: Path, root: Path, **changes) -> Path:
    data = {
        "name": "tiny_men", "dataset": "pufolder", "normal_classes": ["normal"], "sensitive_classes": ["sensitive"],
        "prompt": "a photo of a man", "dataset_root": str(root),
        "counts": {"unlabeled_normal": 12, "unlabeled_sensitive": 3, "labeled_sensitive": 4, "normal_test": "all"},
        "dataset_options": {"channels": 3, "image_size": 8}, "image_size": 8, "channels": 3,
        "model_preset": "tiny", "quality_metric": "fd_classifier",
    }
    data.update(changes)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{data['name']}.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def test_pu_folder_split_reads_bags_prompts_and_truth(tmp_path):
    root = write_pu_folder(tmp_path / "men")
    split = build_split(load_split_file(pu_split_file(tmp_path / "splits", root)), seed=0)
    assert len(split.unlabeled) == 15 and len(split.labeled_sensitive) == 4 and len(split.labeled_normal) == 0
    assert split.truth_known and int(split.unlabeled_is_sensitive.sum()) == 3
    # The test sets: eval's held-out fifth (2 of 10 per class).
    assert len(split.normal_test) == 2 and len(split.sensitive_test) == 2
    assert split.normal_test.float().mean() > 150 > split.sensitive_test.float().mean()
    assert split.prompts == ("a photo of a man", "a portrait of a man")
    assert split.unlabeled_prompt_ids.tolist() == [i % 2 for i in range(15)]
    assert split.labeled_sensitive_prompt_ids.tolist() == [0] * 4
    assert not split.is_conditional  # captions set the text; the PU risk stays pooled
    assert split.prompt_shares().tolist() == pytest.approx([0.5, 0.5])  # U's 12 normal images, 6 of each
    assert split.summary()["unlabeled_sensitive"] == 3
    from pudm_bench.data.build import without_unlabeled

    assert without_unlabeled(split, [0, 1]).unlabeled_prompt_ids.tolist() == [i % 2 for i in range(2, 15)]
    # Without metadata: the split's one prompt, U's truth unknown (the declared counts are reported).
    plain = write_pu_folder(tmp_path / "plain", captions=False)
    (plain / "metadata.jsonl").unlink()
    split = build_split(load_split_file(pu_split_file(tmp_path / "splits2", plain)), seed=0)
    assert split.prompts == ("a photo of a man",) and not split.truth_known
    assert split.summary()["unlabeled_sensitive"] == 3 and split.prompt_shares() is None
    # The filter baseline runs, but without ground truth cannot say what it removed.
    from dataclasses import replace

    from pudm_bench.prior.estimate import DEFAULT_SCORER, filter_unlabeled

    result = filter_unlabeled(split, 0.2, config=replace(DEFAULT_SCORER, steps=5))
    assert len(result.removed) == 3 and np.isnan(result.sensitive_removed_share)
    kept = without_unlabeled(split, result.removed)
    assert len(kept.unlabeled) == 12 and len(kept.unlabeled_is_sensitive) == 12


@pytest.mark.parametrize("change, message", [
    (dict(counts={"unlabeled_normal": 10, "unlabeled_sensitive": 3, "labeled_sensitive": 4, "normal_test": "all"}),
     "= 13 but U's folder holds 15 images"),
    (dict(counts={"unlabeled_normal": 12, "unlabeled_sensitive": 3, "labeled_sensitive": 9, "normal_test": "all"}),
     "labeled_sensitive=9 = 9 but the sensitive folder holds only 5"),
    (dict(counts={"unlabeled_normal": 11, "unlabeled_sensitive": 4, "labeled_sensitive": 4, "normal_test": "all"}),
     "metadata marks 3 of U's images sensitive but counts.unlabeled_sensitive=4"),
])
def test_pu_folder_mistakes_are_one_line_errors(tmp_path, change, message):
    root = write_pu_folder(tmp_path / "men")
    with pytest.raises(ConfigError, match=message) as info:
        build_split(load_split_file(pu_split_file(tmp_path / "splits", root, **change)), seed=0)
    assert "\n" not in str(info.value)


def test_pu_folder_needs_its_layout_and_clean_metadata(tmp_path):
    from pudm_bench.errors import DataNotFoundError

    root = write_pu_folder(tmp_path / "men")
    spec = load_split_file(pu_split_file(tmp_path / "splits", root))
    with (root / "metadata.jsonl").open("a") as f:
        f.write(json.dumps({"file_name": "0_unlabeled/n000.png", "caption": "x"}) + "\n")
    with pytest.raises(ConfigError, match="unknown key\\(s\\) caption; allowed: file_name, text, sensitive"):
        build_split(spec)
    (root / "metadata.jsonl").unlink()
    for path in (root / "1_sensitive").iterdir():
        path.unlink()
    (root / "1_sensitive").rmdir()
    with pytest.raises(DataNotFoundError, match="has no 1_sensitive/ folder"):
        build_split(spec)


def test_sd_trains_on_a_pu_folder_with_captions(tiny_sd, tmp_path):
    from pudm_bench.training.loop import train

    root = write_pu_folder(tmp_path / "men")
    splits = tmp_path / "splits"
    pu_split_file(splits, root)
    config = TrainConfig(split="tiny_men", splits_dirs=(str(splits),), method="pu", beta=0.2, model="sd",
                         pretrained=str(tiny_sd), steps=4, batch_size=8, warmup_steps=1, log_every=2,
                         checkpoint_every=4)
    split = build_split(get_split("tiny_men", [splits]))
    result = train(config, split, tmp_path / "run")
    assert result.step == 4 and np.isfinite(result.metrics["loss"]) and not result.denoiser.conditional
    drawn = result.generator(4, steps=2, seed=0)
    assert drawn.images.shape == (4, 3, 8, 8) and drawn.conditions.tolist() == [0, 0, 1, 1]  # both captions


def test_shipped_example_split_is_the_papers_case():
    spec = get_split("sd_middle_aged_man")
    assert spec.dataset == "pufolder" and spec.prompt == "a photo of a middle-aged man"
    assert (spec.counts.unlabeled_normal, spec.counts.unlabeled_sensitive, spec.counts.labeled_sensitive) == (64, 16, 20)
    assert spec.counts.true_prior == pytest.approx(0.2) and spec.image_size == 512


# ------------------------------------------------------------------------------------------------- the sweep


@pytest.mark.slow
def test_smoke_sweep_on_the_latent_path(tiny_sd, tmp_path, mlflow_store, session_referees):
    """One searched trial of LoRA PU-DM on the tiny SD pipeline through Ray Train, Optuna and MLflow."""
    from tests.helpers import read_back

    store = tmp_path / "store"
    session_referees(store / "digits_even_cond-sd_lora-smoke-s0" / "cache")
    done = subprocess.run(
        [sys.executable, "-m", "pudm_bench.sweep", "--split", "digits_even_cond", "--budget", "smoke", "--trials", "1",
         "--no-baselines", "--model", "sd", "--pretrained", str(tiny_sd), "--lora-rank", "4",
         "--search-space", str(ROOT / "search_spaces" / "sd_lora.yaml"), "--num-cpus", "2", "--storage", str(store),
         "--mlflow-uri", mlflow_store, "--quiet"],
        capture_output=True, text=True, cwd=tmp_path, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    client, parents, children = read_back(mlflow_store, "pudm-digits_even_cond")
    assert len(parents) == 1 and len(children) == 1
    parent, child = parents[0], children[0]
    assert parent.data.tags["pudm.model"] == "sd+lora4" and parent.data.params["model"] == "sd"
    assert child.info.status == "FINISHED" and child.data.params["correction"] == "abs"  # fixed by sd_lora.yaml
    metrics = child.data.metrics
    assert_rate_is_a_scored_count(metrics, int(metrics["num_samples"]))
    assert metrics["fd_classifier"] >= 0
    assert metrics["num_samples/low"] + metrics["num_samples/high"] == metrics["num_samples"]
    assert "non_sensitive_rate/low" in metrics and "non_sensitive_rate_min_condition" in metrics
    assert len(client.get_metric_history(child.info.run_id, "loss")) >= 2
    assert "samples.png" in {a.path for a in client.list_artifacts(child.info.run_id)}
    train_config = json.loads(Path(client.download_artifacts(child.info.run_id, "train_config.json",
                                                             str(tmp_path))).read_text())
    assert train_config["model"] == "sd" and train_config["lora_rank"] == 4 and train_config["model_preset"] is None
    # The trial's final checkpoint holds the LoRA adapters, loadable onto the base pipeline.
    adapters = list(store.glob("**/final/pipeline/lora/pytorch_lora_weights.safetensors"))
    assert adapters and all("lora" in k for k in load_file(adapters[0]))


def test_lora_in_mixed_precision_keeps_adapters_float32(tiny_sd, cond_split, tmp_path):
    """bf16 autocast (the CPU stand-in for fp16 on a GPU): frozen base weights stored in bf16, adapters float32."""
    from pudm_bench.training.loop import train

    result = train(sd_config(tiny_sd, lora_rank=4, precision="bf16"), cond_split, tmp_path / "run")
    dtypes = {(p.requires_grad, p.dtype) for p in result.model.parameters()}
    assert dtypes == {(True, torch.float32), (False, torch.bfloat16)}
    assert np.isfinite(result.metrics["loss"])
    assert result.generator(2, steps=2, seed=0).images.shape == (2, 1, 8, 8)
