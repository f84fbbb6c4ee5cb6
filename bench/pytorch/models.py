"""PyTorch twins of ctrcl's students, layer for layer (crates/ctrcl-models), for speed comparisons.

UNet: SSL4MIS U-Net as ctrcl builds it (3x3 convs without bias before BatchNorm, LeakyReLU 0.01,
dropout per encoder level, 2x2 transposed-conv up, 1x1 head). SwinUnet: Swin-Unet with ctrcl's
decoder (skip fusion by a linear layer on the concatenation, patch expanding, x-patch final expand,
1x1 head without bias), windows clamped to small grids and shifted on every second block.
"""
import torch
import torch.nn as nn
import torch.nn.functional as F


class ConvBlock(nn.Module):
    def __init__(self, cin, cout, p):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.LeakyReLU(0.01),
            nn.Dropout(p),
            nn.Conv2d(cout, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.LeakyReLU(0.01),
        )

    def forward(self, x):
        return self.body(x)


class UNet(nn.Module):
    def __init__(self, in_ch=1, classes=4, ch=(16, 32, 64, 128, 256), drop=(0.05, 0.1, 0.2, 0.3, 0.5)):
        super().__init__()
        self.enc = nn.ModuleList([ConvBlock(in_ch if i == 0 else ch[i - 1], ch[i], drop[i]) for i in range(5)])
        self.up = nn.ModuleList([nn.ConvTranspose2d(ch[i], ch[i - 1], 2, stride=2) for i in range(4, 0, -1)])
        self.dec = nn.ModuleList([ConvBlock(2 * ch[i - 1], ch[i - 1], 0.0) for i in range(4, 0, -1)])
        self.head = nn.Conv2d(ch[0], classes, 1)

    def forward(self, x):
        skips = []
        for i, block in enumerate(self.enc):
            x = block(x if i == 0 else F.max_pool2d(x, 2))
            skips.append(x)
        x = skips.pop()
        for up, dec in zip(self.up, self.dec):
            x = dec(torch.cat([skips.pop(), up(x)], 1))
        return self.head(x)


class BasicBlock(nn.Module):
    def __init__(self, cin, cout, stride):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.downsample = (nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
                           if stride != 1 or cin != cout else None)

    def forward(self, x):
        h = self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x)))))
        return F.relu(h + (self.downsample(x) if self.downsample is not None else x))


class ResUnet(nn.Module):
    """ctrcl's resunet: ResNet-34-style encoder, U-Net decoder with transposed-conv up."""

    def __init__(self, in_ch=1, classes=4, ch=(64, 64, 128, 256, 512), blocks=(3, 4, 6, 3), dec=(256, 128, 64, 32, 16)):
        super().__init__()
        self.conv1 = nn.Conv2d(in_ch, ch[0], 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(ch[0])
        layers, cin = [], ch[0]
        for s in range(4):
            stage = []
            for i in range(blocks[s]):
                stage.append(BasicBlock(cin, ch[s + 1], (1 if s == 0 else 2) if i == 0 else 1))
                cin = ch[s + 1]
            layers.append(nn.Sequential(*stage))
        self.layers = nn.ModuleList(layers)
        skips, deep = (ch[3], ch[2], ch[1], ch[0], 0), ch[4]
        self.up, self.dec = nn.ModuleList(), nn.ModuleList()
        for j in range(5):
            self.up.append(nn.ConvTranspose2d(deep, dec[j], 2, stride=2))
            self.dec.append(nn.Sequential(
                nn.Conv2d(dec[j] + skips[j], dec[j], 3, padding=1, bias=False), nn.BatchNorm2d(dec[j]), nn.ReLU(),
                nn.Conv2d(dec[j], dec[j], 3, padding=1, bias=False), nn.BatchNorm2d(dec[j]), nn.ReLU()))
            deep = dec[j]
        self.head = nn.Conv2d(dec[4], classes, 1)

    def forward(self, x):
        stem = F.relu(self.bn1(self.conv1(x)))
        h = F.max_pool2d(stem, 3, 2, 1)
        skips = [stem]
        for layer in self.layers:
            h = layer(h)
            skips.append(h)
        h = skips.pop()
        for up, dec in zip(self.up, self.dec):
            h = up(h)
            if skips:
                h = torch.cat([h, skips.pop()], 1)
            h = dec(h)
        return self.head(h)


class WindowAttention(nn.Module):
    def __init__(self, dim, heads, window):
        super().__init__()
        self.heads, self.window = heads, window
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.table = nn.Parameter(torch.randn((2 * window - 1) ** 2, heads) * 0.02)
        coords = torch.stack(torch.meshgrid(torch.arange(window), torch.arange(window), indexing="ij")).flatten(1)
        rel = (coords[:, :, None] - coords[:, None, :]).permute(1, 2, 0) + (window - 1)
        self.register_buffer("index", rel[..., 0] * (2 * window - 1) + rel[..., 1], persistent=False)

    def forward(self, x, mask=None):
        bw, n, c = x.shape
        hd = c // self.heads
        q, k, v = self.qkv(x).reshape(bw, n, 3, self.heads, hd).permute(2, 0, 3, 1, 4)
        attn = (q * hd ** -0.5) @ k.transpose(-2, -1)
        attn = attn + self.table[self.index.view(-1)].view(n, n, -1).permute(2, 0, 1)[None]
        if mask is not None:
            nw = mask.shape[0]
            attn = (attn.view(bw // nw, nw, self.heads, n, n) + mask[None, :, None]).view(bw, self.heads, n, n)
        return self.proj((attn.softmax(-1) @ v).transpose(1, 2).reshape(bw, n, c))


class SwinBlock(nn.Module):
    def __init__(self, dim, heads, grid, window, shift, mlp_ratio):
        super().__init__()
        self.grid, self.window, self.shift = grid, window, shift
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.attn = WindowAttention(dim, heads, window)
        self.mlp = nn.Sequential(nn.Linear(dim, int(dim * mlp_ratio)), nn.GELU(), nn.Linear(int(dim * mlp_ratio), dim))
        if shift:
            img = torch.zeros(1, grid, grid, 1)
            cnt = 0
            for hs in (slice(0, -window), slice(-window, -shift), slice(-shift, None)):
                for ws in (slice(0, -window), slice(-window, -shift), slice(-shift, None)):
                    img[:, hs, ws, :] = cnt
                    cnt += 1
            w = self.partition(img).squeeze(-1)
            m = w[:, None, :] - w[:, :, None]
            self.register_buffer("mask", m.masked_fill(m != 0, -100.0).masked_fill(m == 0, 0.0), persistent=False)
        else:
            self.mask = None

    def partition(self, x):
        b, g, _, c = x.shape
        w = self.window
        return x.view(b, g // w, w, g // w, w, c).permute(0, 1, 3, 2, 4, 5).reshape(-1, w * w, c)

    def forward(self, x):
        b, n, c = x.shape
        g, w = self.grid, self.window
        h = self.norm1(x).view(b, g, g, c)
        if self.shift:
            h = torch.roll(h, (-self.shift, -self.shift), (1, 2))
        h = self.attn(self.partition(h), self.mask)
        h = h.view(b, g // w, g // w, w, w, c).permute(0, 1, 3, 2, 4, 5).reshape(b, g, g, c)
        if self.shift:
            h = torch.roll(h, (self.shift, self.shift), (1, 2))
        x = x + h.reshape(b, n, c)
        return x + self.mlp(self.norm2(x))


class PatchMerging(nn.Module):
    def __init__(self, dim, grid):
        super().__init__()
        self.grid = grid
        self.norm = nn.LayerNorm(4 * dim)
        self.reduction = nn.Linear(4 * dim, 2 * dim, bias=False)

    def forward(self, x):
        b, _, c = x.shape
        x = x.view(b, self.grid, self.grid, c)
        x = torch.cat([x[:, 0::2, 0::2], x[:, 1::2, 0::2], x[:, 0::2, 1::2], x[:, 1::2, 1::2]], -1)
        return self.reduction(self.norm(x.view(b, -1, 4 * c)))


class PatchExpand(nn.Module):
    def __init__(self, dim, grid, factor):
        super().__init__()
        self.grid, self.factor = grid, factor
        out = dim // 2 if factor == 2 else dim
        self.expand = nn.Linear(dim, factor * factor * out, bias=False)
        self.norm = nn.LayerNorm(out)

    def forward(self, x):
        b = x.shape[0]
        g, f = self.grid, self.factor
        x = self.expand(x)
        c = x.shape[-1] // (f * f)
        x = x.view(b, g, g, f, f, c).permute(0, 1, 3, 2, 4, 5).reshape(b, g * f * g * f, c)
        return self.norm(x)


class SwinUnet(nn.Module):
    def __init__(self, size=224, classes=4, patch=4, embed=96, depths=(2, 2, 2, 2), dec_depths=(2, 2, 2),
                 heads=(3, 6, 12, 24), window=7, mlp_ratio=4.0, in_ch=1):
        super().__init__()
        c, grid = embed, size // patch
        self.grid, self.patch = grid, patch

        def stage(s, depth):
            g = grid >> s
            w, shifts = (g, False) if g <= window else (window, True)
            return nn.ModuleList([SwinBlock(c << s, heads[s], g, w, w // 2 if shifts and j % 2 else 0, mlp_ratio)
                                  for j in range(depth)])

        # A grey image is repeated on an RGB stem (ImageNet weights fit it); other counts get their own.
        self.patch_embed = nn.Conv2d(3 if in_ch == 1 else in_ch, c, patch, stride=patch)
        self.patch_norm = nn.LayerNorm(c)
        self.enc = nn.ModuleList([stage(s, depths[s]) for s in range(4)])
        self.merge = nn.ModuleList([PatchMerging(c << s, grid >> s) for s in range(3)])
        self.norm = nn.LayerNorm(8 * c)
        self.bottleneck_expand = PatchExpand(8 * c, grid >> 3, 2)
        self.fuse = nn.ModuleList([nn.Linear(2 * (c << s), c << s) for s in (2, 1, 0)])
        self.dec = nn.ModuleList([stage(s, dec_depths[j]) for j, s in enumerate((2, 1, 0))])
        self.expand = nn.ModuleList([PatchExpand(c << s, grid >> s, 2) for s in (2, 1)])
        self.norm_up = nn.LayerNorm(c)
        self.final_expand = PatchExpand(c, grid, patch)
        self.head = nn.Conv2d(c, classes, 1, bias=False)

    def forward(self, x):
        if x.shape[1] == 1:
            x = x.repeat(1, 3, 1, 1)
        t = self.patch_norm(self.patch_embed(x).flatten(2).transpose(1, 2))
        skips = []
        for s in range(4):
            skips.append(t)
            for blk in self.enc[s]:
                t = blk(t)
            if s < 3:
                t = self.merge[s](t)
        t = self.bottleneck_expand(self.norm(t))
        for j in range(3):
            t = self.fuse[j](torch.cat([t, skips[2 - j]], -1))
            for blk in self.dec[j]:
                t = blk(t)
            if j < 2:
                t = self.expand[j](t)
        t = self.final_expand(self.norm_up(t))
        b, _, c = t.shape
        side = self.grid * self.patch
        return self.head(t.transpose(1, 2).reshape(b, c, side, side))


class EfficientAttention(nn.Module):
    def __init__(self, dim, heads, sr):
        super().__init__()
        self.heads = heads
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(dim, 2 * dim)
        self.proj = nn.Linear(dim, dim)
        self.sr = nn.Conv2d(dim, dim, sr, sr) if sr > 1 else None
        self.norm = nn.LayerNorm(dim) if sr > 1 else None

    def forward(self, x, h, w):
        b, n, c = x.shape
        hd = c // self.heads
        q = self.q(x).view(b, n, self.heads, hd).transpose(1, 2)
        if self.sr is not None:
            x = self.norm(self.sr(x.transpose(1, 2).reshape(b, c, h, w)).flatten(2).transpose(1, 2))
        k, v = self.kv(x).view(b, -1, 2, self.heads, hd).permute(2, 0, 3, 1, 4)
        attn = ((q * hd ** -0.5) @ k.transpose(-2, -1)).softmax(-1)
        return self.proj((attn @ v).transpose(1, 2).reshape(b, n, c))


class MixFfn(nn.Module):
    def __init__(self, dim, hidden):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.dwconv = nn.Conv2d(hidden, hidden, 3, padding=1, groups=hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x, h, w):
        x = self.fc1(x)
        b, n, c = x.shape
        x = self.dwconv(x.transpose(1, 2).reshape(b, c, h, w)).flatten(2).transpose(1, 2)
        return self.fc2(F.gelu(x))


class MitBlock(nn.Module):
    def __init__(self, dim, heads, sr, mlp_ratio):
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.attn = EfficientAttention(dim, heads, sr)
        self.ffn = MixFfn(dim, mlp_ratio * dim)

    def forward(self, x, h, w):
        x = x + self.attn(self.norm1(x), h, w)
        return x + self.ffn(self.norm2(x), h, w)


class SegFormer(nn.Module):
    """ctrcl's segformer (MiT-B0 sizes): overlapping patch embeddings, efficient attention,
    Mix-FFN, all-MLP decoder."""

    def __init__(self, in_ch=1, classes=4, dims=(32, 64, 160, 256), depths=(2, 2, 2, 2), heads=(1, 2, 5, 8),
                 sr=(8, 4, 2, 1), mlp_ratio=4, decoder_dim=256):
        super().__init__()
        self.embed, self.embed_norm, self.blocks, self.norm = (nn.ModuleList() for _ in range(4))
        cin = in_ch
        for i in range(4):
            k, s = (7, 4) if i == 0 else (3, 2)
            self.embed.append(nn.Conv2d(cin, dims[i], k, s, k // 2))
            self.embed_norm.append(nn.LayerNorm(dims[i]))
            self.blocks.append(nn.ModuleList([MitBlock(dims[i], heads[i], sr[i], mlp_ratio) for _ in range(depths[i])]))
            self.norm.append(nn.LayerNorm(dims[i]))
            cin = dims[i]
        self.project = nn.ModuleList([nn.Linear(d, decoder_dim) for d in dims])
        self.fuse = nn.Sequential(nn.Conv2d(4 * decoder_dim, decoder_dim, 1, bias=False), nn.BatchNorm2d(decoder_dim), nn.ReLU())
        self.head = nn.Conv2d(decoder_dim, classes, 1)

    def forward(self, x):
        h, w = x.shape[2:]
        projected = []
        for i in range(4):
            x = self.embed[i](x)
            b, c, sh, sw = x.shape
            t = self.embed_norm[i](x.flatten(2).transpose(1, 2))
            for blk in self.blocks[i]:
                t = blk(t, sh, sw)
            t = self.norm[i](t)
            projected.append(self.project[i](t).transpose(1, 2).reshape(b, -1, sh, sw))
            x = t.transpose(1, 2).reshape(b, c, sh, sw)
        up = [p if p.shape[2] == h // 4 else F.interpolate(p, (h // 4, w // 4), mode="bilinear", align_corners=False)
              for p in reversed(projected)]
        logits = self.head(self.fuse(torch.cat(up, 1)))
        return F.interpolate(logits, (h, w), mode="bilinear", align_corners=False)
