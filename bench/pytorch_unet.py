#!/usr/bin/python3
"""Peer benchmark: the diffusers UNet2DModel architecture written in plain PyTorch (Debian's python3-torch 1.13; no
diffusers), checked against the reference outputs first, then timed like `ddpm bench unet` / `ddpm train`.

    /usr/bin/python3 bench/pytorch_unet.py check  [../shared/reference]   # our replica vs diffusers' outputs
    /usr/bin/python3 bench/pytorch_unet.py infer  [--threads 2]           # cifar10-32 forward: eager, TorchScript
    /usr/bin/python3 bench/pytorch_unet.py train  [--threads 2 --batch 64]  # fashion-mnist preset training step

Benchmark-only: ddpm.cpp never imports torch.
"""
import argparse, json, math, os, struct, sys, time

import torch
import torch.nn as nn
import torch.nn.functional as F


def timestep_embedding(t, dim, flip, shift):
    half = dim // 2
    exponent = -math.log(10000) * torch.arange(half, dtype=torch.float32) / (half - shift)
    args = t.float()[:, None] * torch.exp(exponent)[None, :]
    emb = torch.cat([torch.sin(args), torch.cos(args)], dim=-1)
    if flip:
        emb = torch.cat([emb[:, half:], emb[:, :half]], dim=-1)
    if dim % 2:
        emb = F.pad(emb, (0, 1))
    return emb


class Resnet(nn.Module):
    def __init__(self, cin, cout, temb, groups, eps, scale=1.0):
        super().__init__()
        self.norm1 = nn.GroupNorm(groups, cin, eps=eps)
        self.conv1 = nn.Conv2d(cin, cout, 3, padding=1)
        self.time_emb_proj = nn.Linear(temb, cout)
        self.norm2 = nn.GroupNorm(groups, cout, eps=eps)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1)
        self.conv_shortcut = nn.Conv2d(cin, cout, 1) if cin != cout else None
        self.scale = scale

    def forward(self, x, emb):
        h = self.conv1(F.silu(self.norm1(x)))
        h = h + self.time_emb_proj(F.silu(emb))[:, :, None, None]
        h = self.conv2(F.silu(self.norm2(h)))
        skip = self.conv_shortcut(x) if self.conv_shortcut is not None else x
        return (skip + h) / self.scale


class Attention(nn.Module):
    def __init__(self, c, head_dim, groups, eps, rescale=1.0):
        super().__init__()
        self.heads = c // (head_dim or c)
        self.group_norm = nn.GroupNorm(groups, c, eps=eps)
        self.to_q, self.to_k, self.to_v = nn.Linear(c, c), nn.Linear(c, c), nn.Linear(c, c)
        self.to_out = nn.ModuleList([nn.Linear(c, c)])
        self.rescale = rescale

    def forward(self, x):
        b, c, h, w = x.shape
        t = self.group_norm(x).view(b, c, h * w).transpose(1, 2)
        d = c // self.heads
        q, k, v = (p(t).view(b, -1, self.heads, d).transpose(1, 2) for p in (self.to_q, self.to_k, self.to_v))
        p = torch.softmax(q @ k.transpose(-1, -2) * d ** -0.5, dim=-1)
        o = (p @ v).transpose(1, 2).reshape(b, h * w, c)
        return (self.to_out[0](o).transpose(1, 2).view(b, c, h, w) + x) / self.rescale


class Block(nn.Module):
    pass


class UNet(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        boc, L, G, eps = cfg["block_out_channels"], cfg["layers_per_block"], cfg["norm_num_groups"], cfg["norm_eps"]
        hd = cfg.get("attention_head_dim", 8)
        self.cfg, n, temb = cfg, len(boc), 4 * boc[0]
        self.conv_in = nn.Conv2d(cfg["in_channels"], boc[0], 3, padding=1)
        self.time_embedding = nn.Module()
        self.time_embedding.linear_1, self.time_embedding.linear_2 = nn.Linear(boc[0], temb), nn.Linear(temb, temb)
        if cfg.get("num_class_embeds"):
            self.class_embedding = nn.Embedding(cfg["num_class_embeds"], temb)
        self.down_blocks = nn.ModuleList()
        for i, kind in enumerate(cfg["down_block_types"]):
            blk = Block()
            cin = boc[max(i - 1, 0)]
            blk.resnets = nn.ModuleList([Resnet(cin if j == 0 else boc[i], boc[i], temb, G, eps) for j in range(L)])
            blk.attentions = nn.ModuleList([Attention(boc[i], hd, G, eps) for _ in range(L)]) if kind.startswith("Attn") else None
            if i < n - 1:
                ds = nn.Module()
                ds.conv = nn.Conv2d(boc[i], boc[i], 3, stride=2, padding=cfg.get("downsample_padding", 1))
                blk.downsamplers = nn.ModuleList([ds])
            else:
                blk.downsamplers = None
            self.down_blocks.append(blk)
        self.mid_block = Block()
        self.mid_block.resnets = nn.ModuleList([Resnet(boc[-1], boc[-1], temb, G, eps) for _ in range(2)])
        self.mid_block.attentions = nn.ModuleList([Attention(boc[-1], hd, G, eps)])
        rev = list(reversed(boc))
        self.up_blocks = nn.ModuleList()
        for i, kind in enumerate(cfg["up_block_types"]):
            blk = Block()
            prev, skip_last = rev[max(i - 1, 0)], rev[min(i + 1, n - 1)]
            blk.resnets = nn.ModuleList([Resnet((prev if j == 0 else rev[i]) + (skip_last if j == L else rev[i]), rev[i], temb, G, eps)
                                         for j in range(L + 1)])
            blk.attentions = nn.ModuleList([Attention(rev[i], hd, G, eps) for _ in range(L + 1)]) if kind.startswith("Attn") else None
            if i < n - 1:
                us = nn.Module()
                us.conv = nn.Conv2d(rev[i], rev[i], 3, padding=1)
                blk.upsamplers = nn.ModuleList([us])
            else:
                blk.upsamplers = None
            self.up_blocks.append(blk)
        self.conv_norm_out = nn.GroupNorm(G, boc[0], eps=eps)
        self.conv_out = nn.Conv2d(boc[0], cfg["out_channels"], 3, padding=1)

    def forward(self, x, t, labels=None):
        cfg = self.cfg
        emb = timestep_embedding(t, cfg["block_out_channels"][0], cfg.get("flip_sin_to_cos", True), cfg.get("freq_shift", 0))
        emb = self.time_embedding.linear_2(F.silu(self.time_embedding.linear_1(emb)))
        if labels is not None:
            emb = emb + self.class_embedding(labels)
        h = self.conv_in(x)
        skips = [h]
        for blk in self.down_blocks:
            for j, r in enumerate(blk.resnets):
                h = r(h, emb)
                if blk.attentions is not None:
                    h = blk.attentions[j](h)
                skips.append(h)
            if blk.downsamplers is not None:
                if cfg.get("downsample_padding", 1) == 0:
                    h = F.pad(h, (0, 1, 0, 1))
                h = blk.downsamplers[0].conv(h)
                skips.append(h)
        h = self.mid_block.resnets[0](h, emb)
        h = self.mid_block.attentions[0](h)
        h = self.mid_block.resnets[1](h, emb)
        for blk in self.up_blocks:
            for j, r in enumerate(blk.resnets):
                h = r(torch.cat([h, skips.pop()], dim=1), emb)
                if blk.attentions is not None:
                    h = blk.attentions[j](h)
            if blk.upsamplers is not None:
                h = blk.upsamplers[0].conv(F.interpolate(h, scale_factor=2.0, mode="nearest"))
        return self.conv_out(F.silu(self.conv_norm_out(h)))


def load_safetensors(path):
    with open(path, "rb") as f:
        data = f.read()
    n = struct.unpack("<Q", data[:8])[0]
    header = json.loads(data[8:8 + n])
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        b, e = info["data_offsets"]
        dtype = {"F32": torch.float32, "F16": torch.float16}[info["dtype"]]
        out[name] = torch.frombuffer(bytearray(data[8 + n + b:8 + n + e]), dtype=dtype).reshape(info["shape"]).float()
    return out


def check(reference):
    worst = 0.0
    for model in ("micro", "tiny"):
        cfg = json.load(open(f"{reference}/models/{model}/config.json"))
        net = UNet(cfg).eval()
        net.load_state_dict(load_safetensors(f"{reference}/models/{model}/diffusion_pytorch_model.safetensors"))
        size = cfg["sample_size"]
        for case, ts in (("a", [0, 999]), ("b", [37, 500])):
            x = torch.frombuffer(bytearray(open(f"{reference}/unet/{model}/{case}_x.f32", "rb").read()), dtype=torch.float32)
            y = torch.frombuffer(bytearray(open(f"{reference}/unet/{model}/{case}_y_f32.f32", "rb").read()), dtype=torch.float32)
            with torch.no_grad():
                out = net(x.view(2, cfg["in_channels"], size, size), torch.tensor(ts)).flatten()
            err = float((out - y).norm() / y.norm())
            worst = max(worst, err)
            print(f"{model} case {case}: relative L2 {err:.2e}")
    print("replica matches diffusers" if worst < 1e-5 else "MISMATCH")
    return worst < 1e-5


CIFAR10 = dict(in_channels=3, out_channels=3, block_out_channels=[128, 256, 256, 256], layers_per_block=2,
               down_block_types=["DownBlock2D", "AttnDownBlock2D", "DownBlock2D", "DownBlock2D"],
               up_block_types=["UpBlock2D", "UpBlock2D", "AttnUpBlock2D", "UpBlock2D"], attention_head_dim=None,
               downsample_padding=0, flip_sin_to_cos=False, freq_shift=1, norm_eps=1e-6, norm_num_groups=32)
FASHION = dict(in_channels=1, out_channels=1, block_out_channels=[32, 64, 128], layers_per_block=2,
               down_block_types=["DownBlock2D", "DownBlock2D", "AttnDownBlock2D"],
               up_block_types=["AttnUpBlock2D", "UpBlock2D", "UpBlock2D"], attention_head_dim=None,
               norm_eps=1e-5, norm_num_groups=8, num_class_embeds=11)


def median_time(fn, reps):
    fn()
    times = []
    for _ in range(reps):
        s = time.perf_counter()
        fn()
        times.append(time.perf_counter() - s)
    return sorted(times)[len(times) // 2]


def infer(threads, reps):
    torch.set_num_threads(threads)
    net = UNet(CIFAR10).eval()
    print(f"PyTorch {torch.__version__}, {threads} threads, cifar10-32 architecture, "
          f"{sum(p.numel() for p in net.parameters())} parameters")
    for batch in (1, 8):
        x, t = torch.randn(batch, 3, 32, 32), torch.full((batch,), 500)
        with torch.no_grad():
            eager = median_time(lambda: net(x, t), reps)
            traced = torch.jit.optimize_for_inference(torch.jit.trace(net, (x, t)))
            script = median_time(lambda: traced(x, t), reps)
        for name, s in (("eager", eager), ("torchscript+optimize_for_inference", script)):
            print(f"batch {batch} {name:36s} {s * 1e3:9.2f} ms/forward {batch / s:8.1f} images/s")


def train(threads, batch, steps):
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    net = UNet(FASHION).train()
    opt = torch.optim.AdamW(net.parameters(), lr=2e-4)
    x, labels = torch.randn(batch, 1, 28, 28), torch.randint(0, 11, (batch,))
    t = torch.randint(0, 1000, (batch,))

    def step():
        opt.zero_grad()
        loss = F.mse_loss(net(x, t, labels), torch.randn_like(x))
        loss.backward()
        opt.step()

    s = median_time(step, steps)
    print(f"PyTorch {torch.__version__}, {threads} threads, fashion-mnist preset "
          f"({sum(p.numel() for p in net.parameters())} parameters), batch {batch}: "
          f"{s * 1e3:.1f} ms/step, {batch / s:.1f} images/s")


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("mode", choices=["check", "infer", "train"])
    ap.add_argument("reference", nargs="?", default=os.path.join(os.path.dirname(__file__), "../../shared/reference"))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--reps", type=int, default=10)
    a = ap.parse_args()
    if a.mode == "check":
        sys.exit(0 if check(a.reference) else 1)
    elif a.mode == "infer":
        infer(a.threads, a.reps)
    else:
        train(a.threads, a.batch, a.reps)
