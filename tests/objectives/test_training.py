"""Each objective builds, runs forward + backward on CPU and fits a fixed batch; same seed, same run."""
from __future__ import annotations

import pytest
import torch

from anatplane_dist.objectives import available_objectives, get_objective
from anatplane_dist.objectives.config import ObjectiveConfig
from tests.objectives.conftest import fixed_batch, tiny_loss, tiny_model

#: the parts each objective's network must expose (top-level children), and what transfers
PARTS = {
    "multitask": ({"encoder", "decoder", "location_head"}, ("encoder", "decoder")),
    "orientation": ({"encoder", "decoder"}, ("encoder", "decoder")),
    "location": ({"encoder", "location_head"}, ("encoder",)),
    "simclr": ({"encoder", "projection"}, ("encoder",)),
    "genesis": ({"encoder", "decoder"}, ("encoder", "decoder")),
    "rotation": ({"encoder", "rotation_head"}, ("encoder",)),
}


def _setup(name: str, seed: int = 0):
    torch.manual_seed(seed)
    obj = get_objective(ObjectiveConfig(name=name), tiny_loss())
    model = obj.build_model(tiny_model(), num_channels=2)
    return obj, model


def _step(obj, model, batch, input_seed: int):
    b = dict(batch)
    x = obj.inputs(b, torch.Generator().manual_seed(input_seed))
    out = model(x)
    loss, parts = obj.loss(out, b)
    return loss, parts, out, b


def test_every_registered_objective_is_covered():
    assert sorted(PARTS) == available_objectives()


@pytest.mark.parametrize("name", sorted(PARTS))
def test_parts_outputs_and_gradients(name, batch):
    obj, model = _setup(name)
    children, transfer = PARTS[name]
    assert {n for n, _ in model.named_children()} == children
    assert obj.transfer_parts == transfer and set(transfer) <= children
    loss, parts, out, b = _step(obj, model, batch, 0)
    assert loss.ndim == 0 and torch.isfinite(loss)
    assert parts and all(v.ndim == 0 and not v.requires_grad for v in parts.values())
    assert all(v.is_floating_point() for v in out.values())
    loss.backward()
    # every parameter takes part: DDP needs no find_unused_parameters, and no head is dead weight
    missing = [n for n, p in model.named_parameters() if p.grad is None]
    assert not missing, missing
    model.eval()
    with torch.no_grad():
        sums = obj.validation_sums(model(obj.inputs(dict(batch), torch.Generator().manual_seed(1))), b)
    assert set(sums) <= set(obj.validation_names) and "val/loss" in sums
    for key, (total, count) in sums.items():
        assert float(count) > 0 and torch.isfinite(torch.as_tensor(float(total))), key


def test_single_task_variants_do_not_build_the_other_head(batch):
    obj, model = _setup("location")
    assert model.decoder is None and set(_step(obj, model, batch, 0)[2]) == {"location"}
    obj, model = _setup("orientation")
    assert model.location_head is None and set(_step(obj, model, batch, 0)[2]) == {"heatmaps"}


@pytest.mark.parametrize("name", sorted(PARTS))
def test_loss_decreases_on_a_fixed_batch(name, batch):
    """30 Adam steps on one batch whose inputs (views, corruption, rotations) are redrawn from
    the same seed each step: the objective is learnable through this code path."""
    obj, model = _setup(name)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(30):
        loss = _step(obj, model, batch, input_seed=7)[0]
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < 0.7 * losses[0], (name, losses[0], losses[-1])


@pytest.mark.parametrize("name", sorted(PARTS))
def test_same_seed_same_inputs_different_seed_different_inputs(name, batch):
    obj, _ = _setup(name)
    b1, b2, b3 = dict(batch), dict(batch), dict(batch)
    x1 = obj.inputs(b1, torch.Generator().manual_seed(3))
    x2 = obj.inputs(b2, torch.Generator().manual_seed(3))
    x3 = obj.inputs(b3, torch.Generator().manual_seed(4))
    assert torch.equal(x1, x2) and b1.keys() == b2.keys()
    for key in b1:
        assert torch.equal(b1[key], b2[key]), key
    if name in ("simclr", "genesis", "rotation"):
        assert not torch.equal(x1, x3)
    else:
        assert torch.equal(x1, batch["image"])        # the geometric targets follow the augmentation


@pytest.mark.parametrize("name", sorted(PARTS))
def test_a_few_steps_are_reproducible(name):
    """Same seeds -> bit-identical weights after three steps (what an exact resume relies on)."""
    def run():
        obj, model = _setup(name, seed=5)
        opt = torch.optim.SGD(model.parameters(), lr=1e-2)
        for step in range(3):
            loss = _step(obj, model, fixed_batch(seed=step), input_seed=100 + step)[0]
            opt.zero_grad()
            loss.backward()
            opt.step()
        return torch.cat([p.detach().reshape(-1) for p in model.parameters()])
    assert torch.equal(run(), run())


@pytest.mark.parametrize("name", sorted(PARTS))
def test_validation_loss_comes_first_and_counts_images(name, batch):
    """The trainer reports ``val/samples`` as the count of the first validation name."""
    obj, model = _setup(name)
    assert obj.validation_names[0] == "val/loss"
    model.eval()
    b = dict(batch)
    with torch.no_grad():
        sums = obj.validation_sums(model(obj.inputs(b, torch.Generator().manual_seed(0))), b)
    assert float(sums["val/loss"][1]) == batch["image"].shape[0]
