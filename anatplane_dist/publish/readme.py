"""The published ``README.md``: the model card rendered for a person (Hugging Face-style
front matter, what the weights are, on what data, how well, how to load, the limits)."""
from __future__ import annotations

from typing import Any

import yaml

__all__ = ["render_readme"]


def _fmt(v: Any) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def _metrics(card: dict[str, Any]) -> dict[str, Any]:
    """The validation metrics of the card (``val/samples`` is a count, not a metric)."""
    return {k: v for k, v in card["pretext_metrics"].items() if k.startswith("val/") and k != "val/samples"}


def _front_matter(card: dict[str, Any]) -> list[str]:
    """Hugging Face-style YAML front matter (license, library, tags, datasets, metrics)."""
    data, mc = card.get("training_data") or {}, card["model_config"]
    tags = ["medical-imaging", "mri", "self-supervised", "anatomy-oriented-planes", f"backbone-{mc.get('name')}",
            "safetensors"]
    tags += [t for t in (data.get("profile"), "phantom" if data.get("phantom") else None) if t]
    if mc.get("name") == "nnunet":
        tags.append("nnunet")
    meta = {"license": "apache-2.0", "library_name": "anatplane_dist", "tags": tags,
            "datasets": [data["cohort"]] if data.get("cohort") else [],
            "metrics": sorted(k.removeprefix("val/") for k in _metrics(card)),
            "pipeline_tag": "image-feature-extraction"}
    return ["---", yaml.safe_dump(meta, sort_keys=False).rstrip(), "---", ""]


def render_readme(card: dict[str, Any]) -> str:
    """The published README.md: a model card a person reads (what, on what, how well, how to
    load, the limits), paths relative to the published folder."""
    name, version, tr, src = card["name"], card.get("version", ""), card["training"], card["source"]
    data, mc = card.get("training_data") or {}, card["model_config"]
    metrics = _metrics(card)
    n_val = card["pretext_metrics"].get("val/samples")
    is_nnunet = mc.get("name") == "nnunet"
    lines = [*_front_matter(card), f"# {name} / {version}", "",
             f"Encoder{' + decoder' if 'decoder' in card['parts'] else ''} pretrained self-supervised from MRI "
             f"plane geometry (relative orientation heatmaps + relative slice location) with anatplane_dist "
             f"{card['package']['version']} (commit {card['package'].get('git_commit') or 'unknown'}).", "",
             "## Intended use", "",
             "Initialisation for fine-tuning on a target task with few labels (segmentation of the imaged anatomy,"
             " classification of stacks), with this package's fine-tuning"
             + (" or with nnU-Net's own trainer" if is_nnunet else "") + ". Not a segmentation or diagnosis model"
             " by itself: the heads predict pretext targets only.", "",
             "## Training data", ""]
    if data:
        split = ", ".join(f"{s} {v.get('subjects')} subjects / {v.get('samples')} samples"
                          for s, v in data.get("splits", {}).items())
        lines += [f"- cohort: `{data.get('cohort')}`" + (" (synthetic phantom)" if data.get("phantom") else ""),
                  f"- profile: {data.get('profile')}; input view {data.get('input_view')}; reference views "
                  f"{', '.join(data.get('reference_views') or [])}",
                  f"- {data.get('subjects')} subjects, {data.get('samples')} plane-pair samples; split: {split or 'n/a'}",
                  f"- model grid: {data.get('grid')} px at {_fmt(data.get('spacing_mm'))} mm",
                  f"- shard manifest: `{data.get('manifest')}` (copied here, sha256 in `SHA256SUMS`)", ""]
    else:
        lines += ["No shard manifest was reachable at publish time; see the config below.", ""]
    lines += ["## Pretext metrics (validation)", ""]
    if metrics:
        lines += [f"At step {card['pretext_metrics'].get('step')}"
                  + (f", on {n_val} validation samples" if n_val is not None else "") + ":", "",
                  "| metric | value |", "| --- | --- |",
                  *[f"| {k.removeprefix('val/')} | {_fmt(v)} |" for k, v in metrics.items()], ""]
    else:
        lines += ["None logged.", ""]
    lines += ["## Training", "",
              f"`{mc.get('name')}` backbone, {card['num_channels']} heatmap channels; {tr['steps']} optimiser steps,"
              f" global batch {tr['global_batch']}, world size {tr['world_size']}, backend {tr['backend']},"
              f" {tr['samples_seen']} samples"
              + (f", {tr['train_time_s']:.0f} s of training steps" if isinstance(tr.get("train_time_s"), (int, float))
                 else "") + f"; run `{src['run']}`, checkpoint `{src['checkpoint']}`.", "",
              "## Limitations", ""]
    if data.get("phantom"):
        lines += ["- Trained on analytic phantoms only: **not a clinical model**, not validated on patient data; "
                  "use it to test pipelines, or as a starting point that still needs real pretraining.", ""]
    lines += ["- Pretext tasks only: the encoder has never seen a segmentation or diagnosis label.",
              f"- Inputs must be on the pretraining grid ({data.get('grid')} px at {_fmt(data.get('spacing_mm'))} mm),"
              f" single-channel, intensity-normalised as the shards were." if data else
              "- Inputs must be on the pretraining grid, single-channel, intensity-normalised as the shards were.",
              "- Validation metrics are on the held-out subjects of the same cohort, not on other scanners or sites.",
              "", "## How to load", "", "Run these from this folder (or replace `.` by its path).", "",
              "With anatplane_dist (checks `SHA256SUMS`, rebuilds the network from the stored config):", "",
              "```python", "from anatplane_dist.publish import load_pretrained",
              'encoder = load_pretrained(".", part="encoder")', 'network = load_pretrained(".", part="full")',
              "```", "", "Fine-tune with few labels (this package's route; transfers encoder + decoder):", "",
              "```bash", "anatplane finetune seg --data ACDC_ROOT --pretrained . --out results/", "```", "",
              "Any safetensors reader (no pickle; architecture in the metadata):", "",
              "```python", "from safetensors import safe_open",
              'with safe_open("encoder.safetensors", "pt") as f:',
              '    meta = f.metadata()   # format, part, model_config (YAML), num_channels, step',
              "    tensors = {k: f.get_tensor(k) for k in f.keys()}", "```", ""]
    if is_nnunet:
        lines += ["nnU-Net (same plans as pretraining; every tensor but the seg layers is transferred):", "",
                  "```bash", "anatplane export --format nnunet . pretrained.pth",
                  "nnUNetv2_train DATASET 2d FOLD -pretrained_weights pretrained.pth", "```", ""]
    lines += ["## Files", "", "| file | tensors | parameters |", "| --- | --- | --- |",
              *[f"| `{p['file']}` | {p['tensors']} | {p['parameters']} |" for p in card["parts"].values()], "",
              *(["nnU-Net's conv blocks list each conv and norm tensor under two names (`conv`/`norm` and "
                 "`all_modules.N`), both stored, so these counts include each such tensor twice.", ""]
                if is_nnunet else []),
              "`model_card.json` holds all of the above as data; `sha256sum -c SHA256SUMS` checks every file.", "",
              "## Config", "", "The exact resolved config of the run (`config.yaml`):", "", "```yaml",
              yaml.safe_dump(card.get("config") or {}, sort_keys=False).rstrip(), "```", ""]
    return "\n".join(lines)
