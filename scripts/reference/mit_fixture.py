#!/usr/bin/env python3
"""A tiny MiT encoder in the official SegFormer key layout (patch_embed{n}.proj/norm,
block{n}.{j}.{norm1, attn.{q,kv,proj,sr,norm}, norm2, mlp.{fc1,dwconv.dwconv,fc2}}, norm{n}, head)
saved with torch.save as a plain state dict like the released mit_b*.pth, with the stage outputs
PyTorch computes for a fixed grey input repeated on the three RGB channels: the reference for
ctrcl's MiT weight import (crates/ctrcl-models/tests/data/mit_tiny.pth + mit_tiny.json). The
network is bench/pytorch/models.py's SegFormer twin.

    /tmp/torchenv/bin/python scripts/reference/mit_fixture.py    (torch 2.15.0)
"""
import json
import os
import re
import sys

import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "../../bench/pytorch"))
from models import SegFormer  # noqa: E402

torch.manual_seed(0)
SIZE, DIMS, DEPTHS, HEADS, SR = 64, (8, 16, 24, 32), (2, 1, 1, 1), (1, 2, 2, 4), (8, 4, 2, 1)
net = SegFormer(3, 4, dims=DIMS, depths=DEPTHS, heads=HEADS, sr=SR, decoder_dim=16).eval()
for m in net.modules():
    if isinstance(m, torch.nn.LayerNorm):
        m.weight.data.uniform_(0.5, 1.5)
        m.bias.data.uniform_(-0.2, 0.2)

# Twin key → official key; decoder keys are dropped (an ImageNet checkpoint has no decoder).
rules = [
    (r"^embed\.(\d)\.", lambda m: f"patch_embed{int(m.group(1)) + 1}.proj."),
    (r"^embed_norm\.(\d)\.", lambda m: f"patch_embed{int(m.group(1)) + 1}.norm."),
    (r"^blocks\.(\d)\.(\d+)\.ffn\.dwconv\.", lambda m: f"block{int(m.group(1)) + 1}.{m.group(2)}.mlp.dwconv.dwconv."),
    (r"^blocks\.(\d)\.(\d+)\.ffn\.", lambda m: f"block{int(m.group(1)) + 1}.{m.group(2)}.mlp."),
    (r"^blocks\.(\d)\.(\d+)\.", lambda m: f"block{int(m.group(1)) + 1}.{m.group(2)}."),
    (r"^norm\.(\d)\.", lambda m: f"norm{int(m.group(1)) + 1}."),
]
state = {}
for key, value in net.state_dict().items():
    for pattern, repl in rules:
        if re.match(pattern, key):
            state[re.sub(pattern, repl, key)] = value
            break
state["head.weight"] = torch.randn(10, DIMS[3])
state["head.bias"] = torch.zeros(10)
out = os.path.join(os.path.dirname(__file__), "../../crates/ctrcl-models/tests/data")
torch.save(state, os.path.join(out, "mit_tiny.pth"))

x = torch.randn(1, 1, SIZE, SIZE)
with torch.no_grad():
    h = x.repeat(1, 3, 1, 1)
    stages = []
    for i in range(4):
        h = net.embed[i](h)
        b, c, sh, sw = h.shape
        t = net.embed_norm[i](h.flatten(2).transpose(1, 2))
        for blk in net.blocks[i]:
            t = blk(t, sh, sw)
        t = net.norm[i](t)
        h = t.transpose(1, 2).reshape(b, c, sh, sw)
        stages.append(h)
json.dump({
    "size": SIZE, "dims": DIMS, "depths": DEPTHS, "heads": HEADS, "sr": SR,
    "input": x.flatten().tolist(),
    "stage2": stages[1].flatten().tolist(), "stage2_shape": list(stages[1].shape),
    "stage4": stages[3].flatten().tolist(), "stage4_shape": list(stages[3].shape),
    "keys": sorted(state.keys()),
}, open(os.path.join(out, "mit_tiny.json"), "w"))
print("wrote mit_tiny.pth/json:", len(state), "tensors; stage4", list(stages[3].shape))
