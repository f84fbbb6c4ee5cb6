#!/usr/bin/env python3
"""A tiny Swin encoder in the official Swin-Transformer key layout (patch_embed.proj/norm,
layers.i.blocks.j.{norm1,attn.qkv,attn.proj,attn.relative_position_bias_table,norm2,mlp.fc1,
mlp.fc2}, layers.i.downsample.{norm,reduction}, norm, head) saved with torch.save under the
"model" key as the released checkpoints are, with the encoder outputs PyTorch computes for a fixed
grey input: the reference for ctrcl's Swin weight import (crates/ctrcl-models/tests/data/
swin_tiny.pth + swin_tiny.json). The network is bench/pytorch/models.py's SwinUnet twin.

    .venv/bin/python scripts/reference/swin_fixture.py    (torch 2.15.0)
"""
import json
import os
import re
import sys

import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "../../bench/pytorch"))
from models import SwinUnet  # noqa: E402

torch.manual_seed(0)
SIZE, EMBED, DEPTHS, HEADS, WINDOW = 32, 8, (2, 2, 2, 2), (1, 1, 2, 2), 4
net = SwinUnet(SIZE, 3, embed=EMBED, depths=DEPTHS, heads=HEADS, window=WINDOW).eval()
for m in net.modules():
    if isinstance(m, torch.nn.LayerNorm):
        m.weight.data.uniform_(0.5, 1.5)
        m.bias.data.uniform_(-0.2, 0.2)
    if hasattr(m, "table"):
        m.table.data.normal_(0.0, 0.5)

# Twin key → official key; decoder keys are dropped (an ImageNet checkpoint has no decoder).
rules = [
    (r"^patch_embed\.", "patch_embed.proj."),
    (r"^patch_norm\.", "patch_embed.norm."),
    (r"^enc\.(\d+)\.(\d+)\.attn\.table$", r"layers.\1.blocks.\2.attn.relative_position_bias_table"),
    (r"^enc\.(\d+)\.(\d+)\.mlp\.0\.", r"layers.\1.blocks.\2.mlp.fc1."),
    (r"^enc\.(\d+)\.(\d+)\.mlp\.2\.", r"layers.\1.blocks.\2.mlp.fc2."),
    (r"^enc\.(\d+)\.(\d+)\.", r"layers.\1.blocks.\2."),
    (r"^merge\.(\d+)\.", r"layers.\1.downsample."),
    (r"^norm\.", "norm."),
]
state = {}
for key, value in net.state_dict().items():
    for pattern, repl in rules:
        if re.match(pattern, key):
            state[re.sub(pattern, repl, key)] = value
            break
# What released checkpoints also hold and a segmentation student does not use.
state["head.weight"] = torch.randn(10, 8 * EMBED)
state["head.bias"] = torch.zeros(10)
out = os.path.join(os.path.dirname(__file__), "../../crates/ctrcl-models/tests/data")
torch.save({"model": state}, os.path.join(out, "swin_tiny.pth"))

x = torch.randn(1, 1, SIZE, SIZE)
with torch.no_grad():
    t = net.patch_norm(net.patch_embed(x.repeat(1, 3, 1, 1)).flatten(2).transpose(1, 2))
    skips = []
    for s in range(4):
        skips.append(t)
        for blk in net.enc[s]:
            t = blk(t)
        if s < 3:
            t = net.merge[s](t)
    bottleneck = net.norm(t)
json.dump({
    "size": SIZE, "embed": EMBED, "depths": DEPTHS, "heads": HEADS, "window": WINDOW,
    "input": x.flatten().tolist(),
    "skip1": skips[1].flatten().tolist(), "skip1_shape": list(skips[1].shape),
    "bottleneck": bottleneck.flatten().tolist(), "bottleneck_shape": list(bottleneck.shape),
    "keys": sorted(state.keys()),
}, open(os.path.join(out, "swin_tiny.json"), "w"))
print("wrote swin_tiny.pth/json:", len(state), "tensors; bottleneck", list(bottleneck.shape))
