#!/usr/bin/env python3
"""A small ResNet in torchvision's key layout (conv1, bn1, layer1..layer4 of BasicBlocks with
downsample.0/1, fc), saved as a PyTorch state dict, with the encoder output PyTorch computes in
eval mode for a fixed input: the reference for ctrcl's ResNet weight import
(crates/ctrcl-models/tests/data/resnet_tiny.pth + resnet_tiny.json).

    python3 -m venv .venv && .venv/bin/pip install torch==2.15.0 numpy
    .venv/bin/python scripts/reference/resnet_fixture.py
"""
import json
import os

import sys

import torch
import torch.nn as nn
import torch.nn.functional as F

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "../../bench/pytorch"))
from models import BasicBlock  # noqa: E402  (torchvision's BasicBlock layout)

torch.manual_seed(0)
WIDTHS, BLOCKS = (4, 4, 8, 8, 16), (1, 2, 1, 1)


class ResNet(nn.Module):
    """torchvision.models.resnet layout (3-channel stem, fc head), tiny widths."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, WIDTHS[0], 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(WIDTHS[0])
        cin = WIDTHS[0]
        for s in range(4):
            blocks = []
            for i in range(BLOCKS[s]):
                blocks.append(BasicBlock(cin, WIDTHS[s + 1], (1 if s == 0 else 2) if i == 0 else 1))
                cin = WIDTHS[s + 1]
            setattr(self, f"layer{s + 1}", nn.Sequential(*blocks))
        self.fc = nn.Linear(cin, 10)

    def encode(self, x):
        x = F.max_pool2d(F.relu(self.bn1(self.conv1(x))), 3, 2, 1)
        for s in range(4):
            x = getattr(self, f"layer{s + 1}")(x)
        return x


net = ResNet()
# Non-trivial BatchNorm statistics and affine parameters, as a trained network has.
for m in net.modules():
    if isinstance(m, nn.BatchNorm2d):
        m.running_mean.uniform_(-0.5, 0.5)
        m.running_var.uniform_(0.5, 2.0)
        m.weight.data.uniform_(0.5, 1.5)
        m.bias.data.uniform_(-0.2, 0.2)
net.eval()
out = os.path.join(os.path.dirname(__file__), "../../crates/ctrcl-models/tests/data")
torch.save(net.state_dict(), os.path.join(out, "resnet_tiny.pth"))
x = torch.randn(1, 1, 64, 64)
with torch.no_grad():
    # ctrcl's 1-channel adaptation: the stem's weights summed over the RGB inputs, i.e. the
    # 3-channel network applied to the grey image repeated on R, G and B.
    y = net.encode(x.repeat(1, 3, 1, 1))
json.dump({
    "widths": WIDTHS, "blocks": BLOCKS,
    "input": x.flatten().tolist(), "input_shape": list(x.shape),
    "encoded": y.flatten().tolist(), "encoded_shape": list(y.shape),
    "keys": sorted(net.state_dict().keys()),
}, open(os.path.join(out, "resnet_tiny.json"), "w"))
print("wrote resnet_tiny.pth and resnet_tiny.json; encoded", list(y.shape))
