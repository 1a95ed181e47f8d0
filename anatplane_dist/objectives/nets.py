"""Networks of the generic objectives, built from the same registered encoders as ours.

Each is a module whose top-level children are its exportable parts (``encoder`` plus one head,
or ``encoder`` + ``decoder`` for restoration), so the same encoder weights - same architecture,
same initialisation rule - are what fine-tuning takes from every objective.
"""
from __future__ import annotations

from torch import Tensor, nn

from anatplane_dist.model import ModelConfig, get_builder
from anatplane_dist.model.layers import init_weights

__all__ = ["PooledHeadNet", "RestorationNet", "mlp", "build_encoder", "build_encoder_decoder"]


def mlp(cin: int, hidden: list[int], cout: int, dropout: float = 0.0) -> nn.Sequential:
    """Linear -> [Dropout] -> ReLU per hidden size, then a linear output layer."""
    layers: list[nn.Module] = []
    for h in hidden:
        layers += [nn.Linear(cin, h), *([nn.Dropout(dropout)] if dropout > 0 else []), nn.ReLU(inplace=True)]
        cin = h
    layers.append(nn.Linear(cin, cout))
    return nn.Sequential(*layers)


def build_encoder_decoder(cfg: ModelConfig, out_channels: int) -> tuple[nn.Module, nn.Module]:
    """The registered architecture's encoder and decoder, the decoder ending in ``out_channels``."""
    cfg.validate()
    return get_builder(cfg.name)(cfg, out_channels)


def build_encoder(cfg: ModelConfig) -> nn.Module:
    """The registered architecture's encoder alone (its decoder is dropped unused)."""
    return build_encoder_decoder(cfg, 1)[0]


class PooledHeadNet(nn.Module):
    """``encoder`` -> global average pool of the bottleneck -> ``<head_name>`` -> ``{out_key: (B, D)}``."""

    def __init__(self, encoder: nn.Module, head_name: str, head: nn.Module, out_key: str) -> None:
        super().__init__()
        self.encoder = encoder
        self.add_module(head_name, head)
        self.head_name = head_name
        self.out_key = out_key
        init_weights(self)

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        pooled = self.encoder(x)[-1].mean(dim=(2, 3))
        return {self.out_key: getattr(self, self.head_name)(pooled)}


class RestorationNet(nn.Module):
    """The full U-Net (``encoder`` + ``decoder``) mapping an image to an image of its channels."""

    def __init__(self, encoder: nn.Module, decoder: nn.Module) -> None:
        super().__init__()
        self.encoder = encoder
        self.decoder = decoder
        init_weights(self)
        if hasattr(decoder, "init_output"):
            decoder.init_output()

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        return {"reconstruction": self.decoder(self.encoder(x))}
