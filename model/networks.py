"""YOLOv1 networks. Every network maps ``(N, 3, H, W)`` to ``(N, S, S, 5B + C)``."""

from __future__ import annotations

import torch
from torch import nn

from model.config import ModelConfig


def _conv(cin: int, cout: int, k: int, stride: int = 1, bn: bool = False) -> list[nn.Module]:
    layers: list[nn.Module] = [nn.Conv2d(cin, cout, k, stride, k // 2, bias=not bn)]
    if bn:
        layers.append(nn.BatchNorm2d(cout))
    layers.append(nn.LeakyReLU(0.1, inplace=True))
    return layers


class YoloV1(nn.Module):
    """A backbone of convolutions, then a head producing the grid in the loss's layout."""

    def __init__(self, cfg: ModelConfig, features: nn.Sequential, head: nn.Module) -> None:
        super().__init__()
        self.cfg = cfg
        self.features = features
        self.head = head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        S, ch = self.cfg.S, self.cfg.channels
        y = self.head(self.features(x))
        if y.dim() == 4:  # convolutional head: (N, 5B+C, S, S)
            y = y.permute(0, 2, 3, 1)  # (N, S, S, 5B + C)
        y = y.reshape(-1, S, S, ch)  # (N, S, S, 5B + C)
        if self.cfg.head_activation == "sigmoid":
            B = self.cfg.B
            box = y[..., : 5 * B].reshape(-1, S, S, B, 5)  # (N, S, S, B, 5)
            # x, y and conf in [0, 1]; sqrt_w, sqrt_h stay linear (decoding squares them).
            box = torch.cat(
                [torch.sigmoid(box[..., :2]), box[..., 2:4], torch.sigmoid(box[..., 4:])], -1
            )
            y = torch.cat([box.reshape(-1, S, S, 5 * B), torch.sigmoid(y[..., 5 * B :])], -1)
        return y


def _fc_head(cfg: ModelConfig, cin: int, hidden: int) -> nn.Sequential:
    S = cfg.S
    return nn.Sequential(
        nn.Flatten(),
        nn.Linear(cin * S * S, hidden),
        nn.LeakyReLU(0.1, inplace=True),
        nn.Dropout(0.5),
        nn.Linear(hidden, S * S * cfg.channels),
    )


def yolov1(cfg: ModelConfig) -> YoloV1:
    """The paper's network: 24 convolutional layers, 2 fully connected, 448x448 input."""
    layers: list[nn.Module] = []
    layers += _conv(3, 64, 7, 2) + [nn.MaxPool2d(2)]
    layers += _conv(64, 192, 3) + [nn.MaxPool2d(2)]
    layers += _conv(192, 128, 1) + _conv(128, 256, 3) + _conv(256, 256, 1) + _conv(256, 512, 3)
    layers += [nn.MaxPool2d(2)]
    for _ in range(4):
        layers += _conv(512, 256, 1) + _conv(256, 512, 3)
    layers += _conv(512, 512, 1) + _conv(512, 1024, 3) + [nn.MaxPool2d(2)]
    for _ in range(2):
        layers += _conv(1024, 512, 1) + _conv(512, 1024, 3)
    layers += _conv(1024, 1024, 3) + _conv(1024, 1024, 3, 2)
    layers += _conv(1024, 1024, 3) + _conv(1024, 1024, 3)
    layers += [nn.AdaptiveAvgPool2d(cfg.S)]  # a no-op at the paper's 448 input and S=7
    return YoloV1(cfg, nn.Sequential(*layers), _fc_head(cfg, 1024, 4096))


def fast_yolov1(cfg: ModelConfig) -> YoloV1:
    """Fast YOLO: 9 convolutional layers with fewer filters (darknet's yolov1-tiny)."""
    layers: list[nn.Module] = []
    cin = 3
    for cout in (16, 32, 64, 128, 256, 512):
        layers += _conv(cin, cout, 3) + [nn.MaxPool2d(2)]
        cin = cout
    layers += _conv(512, 1024, 3) + _conv(1024, 1024, 3) + _conv(1024, 256, 3)
    layers += [nn.AdaptiveAvgPool2d(cfg.S)]
    return YoloV1(cfg, nn.Sequential(*layers), _fc_head(cfg, 256, 1024))


def tiny_yolov1(cfg: ModelConfig) -> YoloV1:
    """A small CPU-friendly variant: batch-normed 3x3 convolutions, stride 32 to the grid,
    and a convolutional head (each cell sees the whole image through its receptive field)."""
    w = cfg.width
    layers: list[nn.Module] = []
    cin = 3
    for cout in (w // 2, w, 2 * w, 4 * w, 8 * w):
        layers += _conv(cin, cout, 3, bn=True) + [nn.MaxPool2d(2)]
        cin = cout
    layers += _conv(cin, 8 * w, 3, bn=True) + _conv(8 * w, 8 * w, 3, bn=True)
    layers += [nn.AdaptiveAvgPool2d(cfg.S)]  # a no-op when input_size == 32 * S
    head = nn.Sequential(*_conv(8 * w, 8 * w, 3, bn=True), nn.Conv2d(8 * w, cfg.channels, 1))
    return YoloV1(cfg, nn.Sequential(*layers), head)


BUILDERS = {"yolov1": yolov1, "fast-yolov1": fast_yolov1, "tiny-yolov1": tiny_yolov1}


def build_model(cfg: ModelConfig) -> YoloV1:
    return BUILDERS[cfg.arch](cfg)


def pool_before_activation(model: YoloV1) -> YoloV1:
    """The same network, cheaper to train: each LeakyReLU that a max pool follows is
    moved after the pool. A max commutes with a non-decreasing function, so the outputs
    are the same bit for bit, and the gradients agree (tested) but are not always bit
    for bit: where two negative values of one pooling window round to the same
    activation, the pool passes the gradient to the first of them instead of the larger.
    The activation and its backward pass touch a quarter of the elements: a job's
    training step of the default model, batch 16, 416 ms instead of 458 on 2 AVX2
    cores (README). Modules without parameters trade places, so the state dict is the
    same. Inference keeps the order written above, where ONNX Runtime fuses the
    activation into the convolution before it. In place."""
    layers = list(model.features)
    for i in range(len(layers) - 1):
        if isinstance(layers[i], nn.LeakyReLU) and isinstance(layers[i + 1], nn.MaxPool2d):
            layers[i], layers[i + 1] = layers[i + 1], layers[i]
    model.features = nn.Sequential(*layers)
    return model


def count_macs(model: nn.Module, input_size: int) -> int:
    """Multiply-accumulates of one image through the conv and linear layers."""
    total = 0

    def hook(mod: nn.Module, _inp: tuple, out: torch.Tensor) -> None:
        nonlocal total
        if isinstance(mod, nn.Conv2d):
            k = mod.kernel_size[0] * mod.kernel_size[1] * mod.in_channels // mod.groups
            total += out.numel() * k
        elif isinstance(mod, nn.Linear):
            total += out.numel() * mod.in_features

    handles = [
        m.register_forward_hook(hook)
        for m in model.modules()
        if isinstance(m, nn.Conv2d | nn.Linear)
    ]
    try:
        with torch.no_grad():
            model.eval()(torch.zeros(1, 3, input_size, input_size, device="meta"))
    finally:
        for h in handles:
            h.remove()
    return total
