"""SimCLR on 2 real gloo ranks (DDP) = one process on the concatenated batch: loss and gradients."""
from __future__ import annotations

import dataclasses
import importlib
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as tmp

from anatplane_dist.core.dist import free_port
from anatplane_dist.objectives import get_objective
from anatplane_dist.objectives.config import ObjectiveConfig, SimCLRConfig
from anatplane_dist.objectives.simclr import nt_xent_logits
from tests.objectives.conftest import fixed_batch, tiny_loss, tiny_model

WORLD = 2


@pytest.mark.timeout(300)
def test_two_gloo_ranks_match_one_process_on_the_concatenated_batch(tmp_path, monkeypatch):
    simclr = SimCLRConfig(temperature=0.2, projection_dim=16)
    obj = get_objective(ObjectiveConfig(name="simclr", simclr=simclr), tiny_loss())
    model_cfg = tiny_model(norm="group")      # per-sample normalisation: BN statistics would differ per rank
    torch.manual_seed(0)
    model = obj.build_model(model_cfg, 1)
    batch = fixed_batch(b=8)
    views = obj.inputs(batch, torch.Generator().manual_seed(1))       # (16, 1, 32, 32)
    loss, _ = obj.loss(model(views), batch)
    loss.backward()
    ref = {"simclr": dataclasses.asdict(simclr), "model_cfg": model_cfg, "views": views,
           "state_dict": {k: v.clone() for k, v in model.state_dict().items()}}
    torch.save(ref, tmp_path / "ref.pt")

    monkeypatch.syspath_prepend(str(Path(__file__).parent))
    rank_main = importlib.import_module("simclr_ranks").rank_main
    tmp.spawn(rank_main, args=(WORLD, free_port(), str(tmp_path / "ref.pt"), str(tmp_path)), nprocs=WORLD, join=True)
    res = [torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in range(WORLD)]

    assert res[0]["loss"] == pytest.approx(float(loss.detach()), rel=1e-5)
    for r in res:
        for name, p in model.named_parameters():
            assert torch.allclose(r["grads"][name], p.grad, rtol=1e-4, atol=1e-6), name
    # not vacuous: without the backward all-reduce (gradient through the local anchors only) the
    # gradients differ, and the loss over local negatives only is another number
    worst = max(float((res[0]["naive_grads"][n] - p.grad).abs().max() / p.grad.abs().max().clamp(min=1e-12))
                for n, p in model.named_parameters())
    assert worst > 1e-2, worst
    assert res[0]["local_only_loss"] < float(loss.detach()) - 0.1      # 7 negatives instead of 15: easier


def test_nt_xent_matches_its_definition_on_one_process():
    """Against the textbook formula: -log(exp(s_ip/t) / sum_{k != i} exp(s_ik/t)), mean over 2B anchors."""
    z = torch.randn(6, 5, generator=torch.Generator().manual_seed(0))
    logits, pos = nt_xent_logits(z, 0.5, gather=True)      # no process group: local
    loss = torch.nn.functional.cross_entropy(logits, pos)
    zn = torch.nn.functional.normalize(z, dim=1)
    sim = zn @ zn.t() / 0.5
    expected = 0.0
    for i in range(6):
        p = (i + 3) % 6
        others = torch.cat([sim[i, :i], sim[i, i + 1:]])
        expected += -(sim[i, p] - torch.logsumexp(others, 0))
    assert float(loss) == pytest.approx(float(expected) / 6, rel=1e-6)
