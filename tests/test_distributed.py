"""Data-parallel training optimises the global batch's risk: with torch.distributed (gloo, 2 processes on CPU) the
loss and every parameter's gradient equal one process's on the concatenated batch, for every risk, including a
batch whose global R- is negative while one shard's is not; and the training loop's losses over 2 processes equal
its losses in one."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

from pudm_bench.training.losses import LABELED_NORMAL, LABELED_SENSITIVE, UNLABELED, training_risk

U, S, N = UNLABELED, LABELED_SENSITIVE, LABELED_NORMAL
# 12 examples; rank r of 2 takes positions r, r + 2, ... (the loop's sharding). S at 4 (rank 0) has a small
# target, S at 1, 7 (rank 1) a large one: shard 0's R- is positive, shard 1's and the global one are negative
# for beta 0.6 (checked in the test, not assumed).
ROLES = [U, S, U, U, S, U, U, S, U, N, U, N]
CONDITIONS = [0, 1, 0, 1, 1, 0, 1, 1, 0, 0, 1, 1]
SCALE = [1.0, 6.0, 1.0, 1.0, 0.2, 1.0, 1.0, 6.0, 1.0, 1.0, 1.0, 1.0]
BETA = 0.6
CASES = {  # name -> training_risk keyword arguments
    "pu-abs": dict(method="pu", beta=BETA, correction="abs"),
    "pu-max": dict(method="pu", beta=BETA, correction="max"),
    "pnu-max": dict(method="pnu", beta=BETA, correction="max", eta=0.5),
    "pu-max-per-condition": dict(method="pu", beta=BETA, correction="max", per_condition=True),
    "supervised-equal-weights": dict(method="supervised", paper_weighting=False),
    "unsupervised": dict(method="unsupervised"),
}


def make_model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(5, 16), torch.nn.Tanh(), torch.nn.Linear(16, 5))


def make_batch():
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(len(ROLES), 5, generator=generator)
    target = torch.randn(len(ROLES), 5, generator=generator) * torch.tensor(SCALE).unsqueeze(1)
    return x, target, torch.tensor(ROLES), torch.tensor(CONDITIONS)


def loss_and_gradients(model, positions, case, reduce=None):
    """The risk of ``case`` on the examples at ``positions`` of the batch, and the gradients it gives ``model``."""
    x, target, role, condition = (t[positions] for t in make_batch())
    kwargs = dict(CASES[case])
    per_condition = kwargs.pop("per_condition", False)
    error = (model(x) - target).pow(2).sum(dim=1)  # a per-example error, as losses.denoising_error
    risk = training_risk(kwargs.pop("method"), error, role, condition=condition if per_condition else None,
                         num_conditions=2, reduce=reduce, **kwargs)
    model.zero_grad()
    risk.loss.backward()
    return risk, [p.grad.detach().clone() for p in model.parameters()]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _risk_worker(rank: int, port: int, out: str) -> None:
    from torch.nn.parallel import DistributedDataParallel

    from pudm_bench.training.distributed import global_sum

    torch.distributed.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:
        results = {}
        for case in CASES:
            model = make_model()
            ddp = DistributedDataParallel(model)
            risk, grads = loss_and_gradients(ddp, slice(rank, None, 2), case, reduce=global_sum)
            results[case] = {"loss": risk.loss.item(), "negative_risk": risk.negative_risk.item(),
                             "grads": [g.tolist() for g in grads]}
        Path(out, f"rank{rank}.json").write_text(json.dumps(results))
    finally:
        torch.distributed.destroy_process_group()


@pytest.fixture(scope="module")
def two_rank_results(tmp_path_factory):
    out = tmp_path_factory.mktemp("ddp_risks")
    mp.spawn(_risk_worker, args=(free_port(), str(out)), nprocs=2, join=True)
    return [json.loads((out / f"rank{r}.json").read_text()) for r in range(2)]


def test_the_batch_has_a_negative_global_r_minus_and_a_positive_shard():
    """The precondition of the max-correction cases: the shards disagree on the sign of R-."""
    for case in ("pu-max", "pnu-max"):
        whole, _ = loss_and_gradients(make_model(), slice(None), case)
        shard0, _ = loss_and_gradients(make_model(), slice(0, None, 2), case)
        shard1, _ = loss_and_gradients(make_model(), slice(1, None, 2), case)
        assert whole.negative_risk.item() < 0 and shard0.negative_risk.item() > 0 > shard1.negative_risk.item()


@pytest.mark.parametrize("case", list(CASES))
def test_two_ranks_give_the_loss_and_gradients_of_one_process(two_rank_results, case):
    whole, expected = loss_and_gradients(make_model(), slice(None), case)
    for rank in range(2):  # both ranks hold the global loss, and DDP leaves the global gradient on each
        got = two_rank_results[rank][case]
        assert got["loss"] == pytest.approx(whole.loss.item(), rel=1e-5)
        assert got["negative_risk"] == pytest.approx(whole.negative_risk.item(), rel=1e-5, nan_ok=True)
        for grad, want in zip(got["grads"], expected):
            torch.testing.assert_close(torch.tensor(grad), want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("case", ["pu-max", "pnu-max", "pu-max-per-condition", "supervised-equal-weights"])
def test_per_shard_risks_would_not_give_the_global_gradient(case):
    """What the global sum replaces: each rank's own risk, averaged by DDP, differs from the global batch's on this
    batch, so the test above would fail without it."""
    _, expected = loss_and_gradients(make_model(), slice(None), case)
    shard_grads = [loss_and_gradients(make_model(), slice(r, None, 2), case)[1] for r in range(2)]
    averaged = [(a + b) / 2 for a, b in zip(*shard_grads)]
    assert any(not torch.allclose(a, e, rtol=1e-3, atol=1e-5) for a, e in zip(averaged, expected))


# ------------------------------------------------------------------------------------------ the training loop

LOOP_CONFIG = dict(method="pu", beta=0.3, correction="max", steps=4, batch_size=16, warmup_steps=1, log_every=1,
                   checkpoint_every=4, seed=3, device="cpu", model_preset="tiny", lr=1e-3)


def _loop_losses(split, run_dir: Path, prepare_model=None) -> list[float]:
    from pudm_bench.training.config import SampleConfig, TrainConfig
    from pudm_bench.training.loop import Callback, train

    losses: list[float] = []

    class Record(Callback):
        def on_log(self, step: int, metrics: dict[str, float]) -> None:
            losses.append(metrics["loss"])

    config = TrainConfig(**LOOP_CONFIG, sample=SampleConfig(num_images=2, steps=2))
    train(config, split, run_dir, callbacks=[Record()], prepare_model=prepare_model, resume=False)
    return losses


def _loop_worker(rank: int, port: int, out: str) -> None:
    from torch.nn.parallel import DistributedDataParallel

    from pudm_bench.data.build import build_split
    from pudm_bench.data.splits import get_split

    torch.set_num_threads(1)
    torch.distributed.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:
        split = build_split(get_split("digits_even"), seed=0)
        losses = _loop_losses(split, Path(out) / f"run{rank}", prepare_model=DistributedDataParallel)
        Path(out, f"loop{rank}.json").write_text(json.dumps(losses))
    finally:
        torch.distributed.destroy_process_group()


def test_the_loop_on_two_ranks_trains_like_one_process(tmp_path, digits_even_split):
    """Same global batch, noise and timesteps on 2 ranks as on 1: the same loss at every step (the model's updates
    equal too, or later steps would drift apart)."""
    torch.set_num_threads(1)
    single = _loop_losses(digits_even_split, tmp_path / "single")
    mp.spawn(_loop_worker, args=(free_port(), str(tmp_path)), nprocs=2, join=True)
    for rank in range(2):
        assert json.loads((tmp_path / f"loop{rank}.json").read_text()) == pytest.approx(single, rel=1e-4)
    assert len(single) == LOOP_CONFIG["steps"]
