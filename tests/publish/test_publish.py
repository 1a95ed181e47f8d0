"""Publishing to a shared directory: round trip, atomicity under kill, racing publishers, refusals."""
from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
import yaml

from anatplane_dist import publish as pub
from anatplane_dist.cli import main as anatplane
from anatplane_dist.core import checkpoints as ckpt
from anatplane_dist.core import weights
from anatplane_dist.core.hashing import sha256_file
from anatplane_dist.model import ModelConfig, build_model, export_parts
from anatplane_dist.shards.manifest import seal_manifest

MODEL = ModelConfig(name="unet", width=4, depth=2, loc_hidden=[8])
K = 2


def make_run(run_dir: Path, steps: tuple[int, ...] = (4,), seed: int = 0) -> dict[int, torch.nn.Module]:
    """A run dir the way the trainer leaves it: config.yaml, metrics.jsonl, shard manifest,
    complete checkpoints with fp32 exports and meta.json."""
    shards = run_dir.parent / f"shards-{run_dir.name}"
    (shards / "train").mkdir(parents=True, exist_ok=True)
    cohort = run_dir.parent / "heart-phantom"
    cohort.mkdir(parents=True, exist_ok=True)
    (cohort / "phantom.json").write_text("{}")   # what `anatplane phantom` leaves in its cohorts
    (shards / "manifest.json").write_text(json.dumps(seal_manifest({
        "format": "anatplane-shard/2", "input_root": str(cohort), "channels": ["2ch", "4ch"], "num_channels": 2,
        "grid": 32, "spacing_mm": 1.5, "profile": {"name": "heart", "input_view": "sax", "references": ["2ch", "4ch"]},
        "counts": {"subjects": 3, "samples": 60}, "seed": seed,
        "splits": {"train": {"subjects": 2, "samples": 40}, "val": {"subjects": 1, "samples": 20}}})))
    cfg = {"data": {"shards": f"{shards}/train/shard-{{000000..000003}}.tar", "batch_size": 2},
           "model": MODEL.to_dict(), "train": {"max_steps": max(steps)}}
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.yaml").write_text(yaml.safe_dump(cfg))
    rows = []
    models = {}
    for step in steps:
        torch.manual_seed(seed * 1000 + step)
        model = build_model(MODEL, K)
        models[step] = model
        if (run_dir / "checkpoints" / ckpt.step_name(step)).exists():
            continue  # written by an earlier call: checkpoints are never replaced
        state = {f"{p}.{k}": v for p, sd in export_parts(model).items() for k, v in sd.items()}
        tmp = ckpt.prepare_tmp(run_dir, step)
        ckpt.write_meta(tmp, dict(step=step, epoch=0, samples_seen=step * 8, data_seed=seed, world_size=2,
                                  backend="ddp", global_batch=8, metrics={"loss": 1.0 / step}))
        weights.export_fp32(tmp, state, model_config_yaml=MODEL.to_yaml(), num_channels=K, step=step)
        ckpt.finalize(tmp)
        rows += [{"step": step, "epoch": 0, "lr": 1e-3, "loss": 1.0 / step, "loss_ori": 0.5,
                  "loss_loc": 0.5, "samples_per_s": 10.0, "samples_seen": step * 8},
                 {"step": step, "val/loss": 2.0 / step, "val/loss_ori": 1.0 / step}]
    rows.append({"step": max(steps) + 100, "val/loss": -1.0})  # after the last checkpoint: not its metric
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return models


def test_round_trip_card_permissions_and_checksums(tmp_path):
    run = tmp_path / "runs" / "tiny"
    models = make_run(run, steps=(2, 4))
    version = pub.publish(run, tmp_path / "shared", name="heart-unet")

    name_dir = tmp_path / "shared" / "heart-unet"
    assert version.parent == name_dir and version.name.startswith("step00000004-")
    assert os.readlink(name_dir / "latest") == version.name
    assert sorted(p.name for p in version.iterdir()) == sorted(
        ["encoder.safetensors", "decoder.safetensors", "location_head.safetensors", "config.yaml", "model_card.json", "README.md",
         "data_manifest.json", "SHA256SUMS"])
    assert not list(name_dir.glob(".staging-*"))
    for p in version.iterdir():
        assert stat.S_IMODE(p.stat().st_mode) == 0o644, p
    assert stat.S_IMODE(version.stat().st_mode) == 0o755
    assert stat.S_IMODE(name_dir.stat().st_mode) & 0o055 == 0o055
    # the checksum file is plain sha256sum format
    check = subprocess.run(["sha256sum", "-c", "SHA256SUMS"], cwd=version, capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr

    card = json.loads((version / "model_card.json").read_text())
    assert card["source"]["step"] == 4 and card["training"]["world_size"] == 2
    assert card["training"]["global_batch"] == 8 and card["training"]["steps"] == 4
    assert card["training"]["train_time_s"] == pytest.approx((32 - 16) / 10.0)  # logged window: samples / rate
    assert card["pretext_metrics"] == {"step": 4, "val/loss": 0.5, "val/loss_ori": 0.25}
    assert card["model_config"] == MODEL.to_dict() and card["num_channels"] == K
    manifest = tmp_path / "runs" / "shards-tiny" / "manifest.json"
    assert card["data_manifests"] == [{"file": "data_manifest.json", "sha256": sha256_file(manifest)}]
    assert (version / "data_manifest.json").read_bytes() == manifest.read_bytes()
    assert card["training_data"]["phantom"] and card["training_data"]["splits"]["val"] == {"subjects": 1, "samples": 20}
    assert card["data_grid"] == {"size": 32, "spacing": 1.5}
    assert card["package"]["version"]
    assert card["parts"]["encoder"]["parameters"] == sum(t.numel() for t in models[4].encoder.state_dict().values())
    assert "load_pretrained('.'" in card["how_to_load"]
    readme = (version / "README.md").read_text()
    # Hugging Face-style front matter, then the sections a person reads
    _, front, body = readme.split("---\n", 2)
    fm = yaml.safe_load(front)
    assert fm["license"] == "apache-2.0" and fm["library_name"] == "anatplane_dist"
    assert {"phantom", "heart", "safetensors", "backbone-unet"} <= set(fm["tags"])
    assert fm["datasets"] == ["heart-phantom"] and fm["metrics"] == ["loss", "loss_ori"]
    for section in ("## Intended use", "## Training data", "## Pretext metrics (validation)", "## Limitations",
                    "## How to load", "## Config"):
        assert section in body, section
    assert "not a clinical model" in body and "| loss | 0.5 |" in body and "val 1 subjects / 20 samples" in body
    assert 'load_pretrained(".", part="encoder")' in body and "nnUNetv2_train" not in body   # not an nnunet model
    assert yaml.safe_load(body.split("```yaml\n")[1].split("```")[0]) == yaml.safe_load((run / "config.yaml").read_text())
    # paths are relative to the published folder: no path of this machine outside the exact config
    assert str(tmp_path) not in body.split("## Config")[0]
    assert str(tmp_path) not in json.dumps({k: v for k, v in card.items() if k != "config"})

    enc = pub.load_pretrained(name_dir, part="encoder")  # via latest
    ref = models[4].encoder.state_dict()
    assert enc.state_dict().keys() == ref.keys()
    assert all(torch.equal(enc.state_dict()[k], ref[k]) for k in ref)
    full = pub.load_pretrained(version, part="full")
    x = torch.randn(2, 1, 32, 32)
    full.eval(), models[4].eval()
    with torch.no_grad():
        a, b = full(x), models[4](x)
    assert torch.allclose(a["heatmaps"], b["heatmaps"]) and torch.allclose(a["location"], b["location"])
    head = pub.load_pretrained(version / "encoder.safetensors", part="location_head")
    assert isinstance(head, torch.nn.Module) and head.training
    with pytest.raises(ValueError, match="part must be one of"):
        pub.load_pretrained(version, part="head")


def test_same_checkpoint_twice_is_one_version_new_step_moves_latest(tmp_path):
    run = tmp_path / "run"
    make_run(run, steps=(3,))
    first = pub.publish(run, tmp_path / "pub", name="m")
    mtime = (first / "SHA256SUMS").stat().st_mtime_ns
    again = pub.publish(run, tmp_path / "pub", name="m")
    assert again == first and (first / "SHA256SUMS").stat().st_mtime_ns == mtime  # not rewritten
    assert len(pub.list_versions(tmp_path / "pub" / "m")) == 1

    make_run(run, steps=(3, 6))  # training went on (step 6 new)
    newer = pub.publish(run, tmp_path / "pub", name="m")
    assert newer != first and newer.name.startswith("step00000006-")
    assert os.readlink(tmp_path / "pub" / "m" / "latest") == newer.name
    pub.verify(first), pub.verify(newer)  # the old version is untouched
    assert not list((tmp_path / "pub" / "m").glob(".staging-*"))


def test_tampered_partial_and_foreign_versions_are_refused(tmp_path):
    run = tmp_path / "run"
    make_run(run)
    version = pub.publish(run, tmp_path / "pub", name="m")

    enc = version / "encoder.safetensors"
    original = enc.read_bytes()
    flipped = bytearray(original)
    flipped[len(flipped) // 2] ^= 0xFF  # one bit-flipped byte in the middle of the tensors
    enc.write_bytes(bytes(flipped))
    with pytest.raises(pub.VerificationError, match="encoder.safetensors: checksum mismatch"):
        pub.load_pretrained(version)
    enc.write_bytes(original)
    pub.verify(version)  # restored: accepted again

    (version / "decoder.safetensors").rename(tmp_path / "decoder.safetensors")
    with pytest.raises(pub.VerificationError, match=r"partial: missing \['decoder.safetensors'\]"):
        pub.load_pretrained(version, part="encoder")
    (tmp_path / "decoder.safetensors").rename(version / "decoder.safetensors")

    (version / "extra.pt").write_bytes(b"x")
    with pytest.raises(pub.VerificationError, match=r"not covered by SHA256SUMS: \['extra.pt'\]"):
        pub.verify(version)
    (version / "extra.pt").unlink()

    sums = (version / "SHA256SUMS").read_text()
    (version / "SHA256SUMS").unlink()
    with pytest.raises(pub.VerificationError, match="no SHA256SUMS"):
        pub.load_pretrained(version)
    (version / "SHA256SUMS").write_text(sums.replace("  ", " ", 1))
    with pytest.raises(pub.VerificationError, match="malformed"):
        pub.verify(version)


def test_publish_refuses_runs_without_a_complete_checkpoint(tmp_path):
    run = tmp_path / "run"
    (run / "checkpoints" / "step_00000005.tmp").mkdir(parents=True)  # a save that was killed
    with pytest.raises(pub.PublishError, match="no complete checkpoint"):
        pub.publish(run, tmp_path / "pub")
    make_run(run)
    (ckpt.find_latest_complete(run) / "fp32" / "encoder.safetensors").write_bytes(b"not torch")
    # a changed file is refused by the checkpoint's signed marker before it is read (never re-certified)
    with pytest.raises(pub.PublishError, match="does not verify: .*encoder.safetensors differs"):
        pub.publish(run, tmp_path / "pub")
    good = tmp_path / "good"
    make_run(good)
    with pytest.raises(pub.PublishError, match="invalid publish name"):
        pub.publish(good, tmp_path / "pub", name="latest")
    assert not (tmp_path / "pub" / "run").exists() or not list((tmp_path / "pub" / "run").iterdir())


def test_cli(tmp_path, capsys):
    run = tmp_path / "run"
    make_run(run)
    assert anatplane(["publish", str(run), "--to", str(tmp_path / "pub"), "--name", "cli-model"]) == 0
    out = capsys.readouterr().out
    assert "published" in out and "latest -> step00000004-" in out
    assert anatplane(["publish", str(tmp_path / "nothing"), "--to", str(tmp_path / "pub")]) == 2
    assert "no complete checkpoint" in capsys.readouterr().err


# --------------------------------------------------------------------------- other processes
_CHILD = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    import importlib
    import anatplane_dist.publish as pub
    run, to, name, hook, flag, go = sys.argv[1:7]
    if hook != "none":  # pause at a chosen point so the parent can kill us there
        module, _, fn = hook.partition(":")
        home = importlib.import_module(module)
        real = getattr(home, fn)
        def paused(*a, **k):
            out = real(*a, **k) if fn == "copy_durable" else None
            Path(flag).touch()
            time.sleep(120)
            return out
        setattr(home, fn, paused)
    while go != "-" and not Path(go).exists():
        time.sleep(0.01)
    print(pub.publish(run, to, name), flush=True)
""")


def _child(tmp_path: Path, run: Path, name: str, hook: str = "none", go: str = "-") -> tuple[subprocess.Popen, Path]:
    flag = tmp_path / f"flag-{os.urandom(4).hex()}"
    script = tmp_path / "child.py"
    script.write_text(_CHILD)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, str(script), str(run), str(tmp_path / "pub"), name, hook,
                             str(flag), go], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    return proc, flag


@pytest.mark.parametrize("hook", ["anatplane_dist.publish.versions:copy_durable",
                                  "anatplane_dist.core.atomic:rename_noreplace"])
def test_killed_publisher_leaves_no_visible_version(tmp_path, hook):
    """SIGKILL after the first file / just before the rename: nothing a reader can load."""
    run = tmp_path / "run"
    make_run(run)
    proc, flag = _child(tmp_path, run, "m", hook=hook)
    deadline = time.monotonic() + 120
    while not flag.exists():
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    name_dir = tmp_path / "pub" / "m"
    staging = list(name_dir.glob(".staging-*"))
    assert len(staging) == 1  # the killed publisher's hidden staging dir ...
    assert pub.list_versions(name_dir) == [] and not (name_dir / "latest").exists()
    with pytest.raises(pub.VerificationError, match="no SHA256SUMS"):
        pub.load_pretrained(name_dir)  # ... is never taken for a version
    with pytest.raises(pub.VerificationError, match="staging directory"):
        pub.load_pretrained(staging[0])
    version = pub.publish(run, tmp_path / "pub", name="m")  # a later publish is unaffected
    assert pub.list_versions(name_dir) == [version]
    pub.load_pretrained(name_dir)


def test_racing_publishers_never_collide(tmp_path):
    """Two processes on the same checkpoint -> one version; on different steps -> two, latest = newest."""
    run_a, run_b = tmp_path / "a", tmp_path / "b"
    make_run(run_a, steps=(4,), seed=1)
    make_run(run_b, steps=(9,), seed=2)
    go = tmp_path / "go"
    procs = [_child(tmp_path, run_a, "m", go=str(go))[0] for _ in range(2)]
    procs += [_child(tmp_path, run_b, "m", go=str(go))[0]]
    time.sleep(3)  # let all three import torch and wait at the start line
    go.touch()
    outs = []
    for p in procs:
        out, err = p.communicate(timeout=120)
        assert p.returncode == 0, err
        outs.append(Path(out.strip()))
    assert outs[0] == outs[1]  # same weights -> the same version, written once
    name_dir = tmp_path / "pub" / "m"
    assert pub.list_versions(name_dir) == [outs[0], outs[2]]
    assert os.readlink(name_dir / "latest") == outs[2].name
    assert not list(name_dir.glob(".staging-*"))
    for v in (outs[0], outs[2]):
        pub.verify(v)


def test_run_with_legacy_pt_exports_publishes_safetensors_same_version(tmp_path):
    """Runs written before safetensors (fp32/<part>.pt) publish as safetensors, and the same
    weights are the same version whichever container the run holds."""
    run = tmp_path / "run"
    models = make_run(run)
    modern = pub.publish(run, tmp_path / "a", name="m")
    fp32 = ckpt.find_latest_complete(run) / "fp32"
    for part, f in weights.find_parts(fp32).items():
        torch.save(weights.load_weights(f), fp32 / f"{part}.pt")
        f.unlink()
    (fp32.parent / ckpt.COMPLETE).write_bytes(b"")      # such runs carry the old, unsigned marker
    legacy = pub.publish(run, tmp_path / "b", name="m")
    assert legacy.name == modern.name
    assert sorted(p.name for p in legacy.glob("*.safetensors")) == [
        "decoder.safetensors", "encoder.safetensors", "location_head.safetensors"]
    assert not list(legacy.glob("*.pt"))
    enc = pub.load_pretrained(legacy, part="encoder")
    assert all(torch.equal(enc.state_dict()[k], v) for k, v in models[4].encoder.state_dict().items())


def test_published_weights_rebuild_in_their_objectives_network(tmp_path):
    """A genesis decoder ends in image channels, not K heatmaps: loading it must not assume the
    multitask network (the published config.yaml names the objective)."""
    from anatplane_dist.objectives import get_objective
    from anatplane_dist.objectives.config import LossConfig, ObjectiveConfig
    run = tmp_path / "run"
    make_run(run)
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    cfg["objective"] = {"name": "genesis"}
    (run / "config.yaml").write_text(yaml.safe_dump(cfg))
    net = get_objective(ObjectiveConfig(name="genesis"), LossConfig()).build_model(MODEL, K)
    ck = ckpt.find_latest_complete(run)
    for f in (ck / "fp32").iterdir():
        f.unlink()
    weights.export_fp32(ck, net.state_dict(), model_config_yaml=MODEL.to_yaml(), num_channels=K, step=4)
    ckpt.write_marker(ck)
    version = pub.publish(run, tmp_path / "pub", name="g")
    dec = pub.load_pretrained(version, part="decoder")
    assert dec.head.out_channels == 1
    assert all(torch.equal(dec.state_dict()[k], v) for k, v in net.decoder.state_dict().items())
