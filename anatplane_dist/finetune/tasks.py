"""The target tasks behind one small interface, so the experiment engine dispatches on a name.

The engine (:mod:`anatplane_dist.experiment`) owns the protocol (split, subsets, cache,
workers, statistics, report); a task only knows its data, its network, its training loop and
its metric.  ``TASKS["seg"]`` and ``TASKS["cls"]`` are the two the package ships; a new target
task is one more entry, with no branch to add in the engine.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

__all__ = ["TaskData", "Task", "SegmentationTask", "ClassificationTask", "TASKS", "get_task"]


@dataclass
class TaskData:
    """The loaded fine-tuning data of one task (handed to each worker once)."""
    task: str
    subjects: dict[str, Any]               # id -> SegSubject | KneeStack
    cfg: Any                               # SegTrainConfig | ClsTrainConfig (non-schedule settings)
    root: str = ""                         # the data root (predictions keep its layout)
    names: tuple[str, ...] = ()            # cls: label names
    skipped: list[Any] = field(default_factory=list)


class Task:
    """What the engine needs of a target task."""
    name: str = ""
    metric: str = ""                       # headline key of :meth:`summarise` (higher is better)
    metric_title: str = ""

    def load(self, root: Path, grid: Any, *, view: str = "sagittal", labels_csv: Path | None = None,
             cfg: Any = None) -> TaskData:
        raise NotImplementedError

    def group(self, data: TaskData, subject: str) -> str:
        """The stratum a subject is drawn from (pathology group, label pattern)."""
        raise NotImplementedError

    def build(self, backbone: Any, data: TaskData) -> Any:
        raise NotImplementedError

    def train(self, net: Any, data: TaskData, subjects: Sequence[str], seed: int, *, schedule: Any,
              device: str, every: int, on_step: Callable[[int], None] | None, desc: str) -> list[float]:
        raise NotImplementedError

    def evaluate(self, net: Any, data: TaskData, subjects: Sequence[str]) -> list[dict[str, Any]]:
        raise NotImplementedError

    def summarise(self, rows: list[dict[str, Any]], data: TaskData) -> dict[str, float]:
        raise NotImplementedError

    def score(self, net: Any, data: TaskData, subjects: Sequence[str]) -> float:
        return float(self.summarise(self.evaluate(net, data, subjects), data)[self.metric])

    def transfer(self, requested: str, parts: Sequence[str]) -> str:
        """What a pretrained arm can transfer given the parts it published."""
        return "encoder"

    def artifacts(self, net: Any, data: TaskData, job: Any, cell_dir: Path) -> dict[str, Any]:
        return {}

    def config(self, data: TaskData) -> dict[str, Any]:
        return data.cfg.to_dict()


class SegmentationTask(Task):
    name, metric, metric_title = "seg", "dice_mean", "Dice"

    def load(self, root, grid, *, view="sagittal", labels_csv=None, cfg=None) -> TaskData:
        from anatplane_dist.finetune.data import load_acdc
        from anatplane_dist.finetune.segmentation import SegTrainConfig

        cfg = cfg or SegTrainConfig()
        subjects, skipped = load_acdc(root, grid, cfg.num_classes)
        return TaskData("seg", {s.subject: s for s in subjects}, cfg, str(root), skipped=list(skipped))

    def group(self, data, subject) -> str:
        return str(data.subjects[subject].info.get("Group", "")) or "?"

    def build(self, backbone, data):
        from anatplane_dist.finetune.segmentation import SegNet

        if backbone.decoder is None:
            raise ValueError("segmentation needs a decoder")
        return SegNet(backbone.encoder, backbone.decoder, data.cfg.num_classes)

    def train(self, net, data, subjects, seed, *, schedule, device, every, on_step, desc):
        from anatplane_dist.finetune.segmentation import train_segmentation

        return train_segmentation(net, [data.subjects[s] for s in subjects], data.cfg, seed, desc=desc,
                                  every=every, on_step=on_step, schedule=schedule, device=device)

    def evaluate(self, net, data, subjects):
        from anatplane_dist.finetune.segmentation import evaluate_segmentation

        return evaluate_segmentation(net, [data.subjects[s] for s in subjects], data.cfg)

    def summarise(self, rows, data):
        from anatplane_dist.finetune.segmentation import summarise_segmentation

        return summarise_segmentation(rows)

    def transfer(self, requested, parts):
        return "encoder" if requested == "encoder+decoder" and "decoder" not in parts else requested

    def artifacts(self, net, data, job, cell_dir):
        """The model file, and the NIfTI predictions of the test subjects when asked for."""
        from anatplane_dist.finetune.predict import prediction_path, save_seg_model, write_prediction
        from anatplane_dist.finetune.segmentation import predict_volume

        cfg = data.cfg
        save_seg_model(cell_dir / "model.pt", net, model_config_yaml=job.model_config_yaml,
                       num_channels=job.num_channels, num_classes=cfg.num_classes, grid=job.grid,
                       largest_component=cfg.largest_component)
        if not job.predictions:
            return {}
        from anatplane_dist.sources.nifti import open_nifti

        written = []
        for sid in job.test:
            for vol in data.subjects[sid].volumes:
                affine = open_nifti(Path(data.root) / vol.source).affine
                p = prediction_path(cell_dir / "predictions", vol.source)
                written.append(str(write_prediction(p, predict_volume(net, vol, cfg), affine).relative_to(cell_dir)))
        return {"predictions": written}


class ClassificationTask(Task):
    name, metric, metric_title = "cls", "auc_mean", "AUC"

    def load(self, root, grid, *, view="sagittal", labels_csv=None, cfg=None) -> TaskData:
        from anatplane_dist.finetune.classification import ClsTrainConfig
        from anatplane_dist.finetune.data import load_knee

        cfg = cfg or ClsTrainConfig()
        stacks, names, skipped = load_knee(root, grid, view=view, labels_csv=labels_csv)
        return TaskData("cls", {s.subject: s for s in stacks}, cfg, str(root), tuple(names), list(skipped))

    def group(self, data, subject) -> str:
        labels = data.subjects[subject].labels
        return "".join(str(int(labels[n])) for n in data.names)

    def build(self, backbone, data):
        from anatplane_dist.finetune.classification import StackClassifier

        return StackClassifier(backbone.encoder, len(data.names), data.cfg.dropout)

    def train(self, net, data, subjects, seed, *, schedule, device, every, on_step, desc):
        from anatplane_dist.finetune.classification import train_classifier

        return train_classifier(net, [data.subjects[s] for s in subjects], list(data.names), data.cfg, seed,
                                desc=desc, every=every, on_step=on_step, schedule=schedule, device=device)

    def evaluate(self, net, data, subjects):
        from anatplane_dist.finetune.classification import evaluate_classifier

        return evaluate_classifier(net, [data.subjects[s] for s in subjects], list(data.names), data.cfg)

    def summarise(self, rows, data):
        from anatplane_dist.finetune.classification import summarise_classification

        return summarise_classification(rows, list(data.names), data.cfg.threshold)

    def config(self, data):
        return {**data.cfg.to_dict(), "label_names": list(data.names)}


TASKS: dict[str, Task] = {"seg": SegmentationTask(), "cls": ClassificationTask()}


def get_task(name: str) -> Task:
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}; known: {sorted(TASKS)}")
    return TASKS[name]
