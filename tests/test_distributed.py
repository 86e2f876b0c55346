"""Data parallel meta-training: 2 gloo processes on CPU against one process, in float64."""

from __future__ import annotations

import datetime
import os
import socket
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

import memmaml
from memmaml import MetaTrainer, MetricsLog, TrainerConfig, load_checkpoint_file
from memmaml.tasks import Sinusoid

DTYPE = torch.float64
NUM_STEPS = 3


def build(meta_batch_size: int = 4, distributed: bool | None = None, model_seed: int = 0) -> MetaTrainer:
    torch.manual_seed(model_seed)
    model = nn.Sequential(nn.Linear(1, 16), nn.Tanh(), nn.Linear(16, 16), nn.Tanh(), nn.Linear(16, 1)).to(DTYPE)
    config = TrainerConfig(
        inner_optimizer=memmaml.SGD(0.05),
        num_inner_steps=2,
        meta_batch_size=meta_batch_size,
        num_eval_tasks=7,
        eval_steps=(0, 2),
        max_grad_norm=1.0,
        seed=3,
    )
    return MetaTrainer(model, Sinusoid(num_shots=5, num_query=6, dtype=DTYPE), config, distributed=distributed)


def run(trainer: MetaTrainer, out: Path, tag: str) -> dict:
    stats = trainer.compute_meta_gradient(trainer.sample_tasks())
    grads = [p.grad.clone() for p in trainer.meta_params]
    trainer.task_generator.manual_seed(trainer.config.seed)  # start training from the same meta-batches
    rows = trainer.train(
        NUM_STEPS,
        log_path=out / f"log-{tag}.jsonl",
        checkpoint_path=out / f"ck-{tag}.pt",
        eval_every=NUM_STEPS,
        progress=False,
    )
    return {
        "grads": grads,
        "loss": stats["loss"].clone(),
        "rows": rows,
        "params": [p.detach().clone() for p in trainer.model.parameters()],
    }


def _worker(rank: int, world_size: int, port: int, out: str) -> None:
    os.environ["MASTER_ADDR"] = "127.0.0.1"
    os.environ["MASTER_PORT"] = str(port)
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world_size, timeout=datetime.timedelta(seconds=60))
    try:
        out_path = Path(out)
        # a different model seed per rank: the trainer broadcasts rank 0's initial parameters
        result = run(build(model_seed=rank), out_path, f"rank{rank}")
        try:
            build(meta_batch_size=3)
        except ValueError as error:
            result["indivisible"] = str(error)
        torch.save(result, out_path / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_gloo_processes_match_one_process(tmp_path):
    mp.spawn(_worker, args=(2, free_port(), str(tmp_path)), nprocs=2, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2)]
    single = run(build(distributed=False), tmp_path, "single")

    # the averaged meta-gradient over 2 x 2 tasks equals one process's over the same 4 tasks
    for rank in ranks:
        for got, ref in zip(rank["grads"], single["grads"], strict=True):
            torch.testing.assert_close(got, ref, rtol=1e-10, atol=1e-14)
        torch.testing.assert_close(rank["loss"], single["loss"], rtol=1e-12, atol=0)
    assert max(g.abs().max().item() for g in single["grads"]) > 1e-3

    # after several clipped outer steps, both ranks hold exactly the same parameters, those of one process
    for p0, p1, ref in zip(ranks[0]["params"], ranks[1]["params"], single["params"], strict=True):
        assert torch.equal(p0, p1)
        torch.testing.assert_close(p0, ref, rtol=1e-10, atol=1e-14)

    # metrics and evaluation (held-out tasks split between the ranks) agree with one process
    for row, ref in zip(ranks[0]["rows"], single["rows"], strict=True):
        assert row.keys() == ref.keys()
        for key, value in ref.items():
            if key in ("sec_per_iter", "elapsed_s"):
                continue
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                assert row[key] == pytest.approx(value, rel=1e-10, abs=1e-14), key
            else:  # labels such as the row kind: equal (pytest >= 9.2 refuses approx on strings)
                assert row[key] == value, key

    # only rank 0 logs and writes checkpoints; the checkpoint holds both ranks' RNG states
    assert not (tmp_path / "log-rank1.jsonl").exists() and not (tmp_path / "ck-rank1.pt").exists()
    assert len(MetricsLog(tmp_path / "log-rank0.jsonl").read()) == len(single["rows"])
    assert len(load_checkpoint_file(tmp_path / "ck-rank0.pt")["rng"]) == 2

    for rank in ranks:
        assert "meta_batch_size=3 is not divisible by the world size 2" in rank["indivisible"]
