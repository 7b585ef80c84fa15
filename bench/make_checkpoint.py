#!/usr/bin/python3
"""Writes a random-weight checkpoint of the cifar10-32 architecture (`ddpm bench unet`'s config, 35.7 M parameters,
143 MB in f32) for timing `ddpm convert`:

    /usr/bin/python3 bench/make_checkpoint.py OUT_DIR      # OUT_DIR/{config.json, diffusion_pytorch_model.safetensors,
                                                           #          diffusion_pytorch_model.bin}

Needs Debian's python3-torch: the parameters come from bench/pytorch_unet.py's replica of UNet2DModel (so names and
shapes are diffusers'), and the .bin is a genuine torch.save zip archive. Benchmark-only: nothing in the build
imports this."""
import json
import os
import struct
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))


def cifar10_config():
    return dict(_class_name="UNet2DModel", sample_size=32, in_channels=3, out_channels=3,
                block_out_channels=[128, 256, 256, 256], layers_per_block=2,
                down_block_types=["DownBlock2D", "AttnDownBlock2D", "DownBlock2D", "DownBlock2D"],
                up_block_types=["UpBlock2D", "UpBlock2D", "AttnUpBlock2D", "UpBlock2D"], attention_head_dim=None,
                downsample_padding=0, flip_sin_to_cos=False, freq_shift=1, norm_eps=1e-6, norm_num_groups=32)


def write_safetensors(path, tensors):
    """tensors: list of (name, shape, little-endian f32 bytes), written in the reference writer's layout."""
    header, offset = {}, 0
    for name, shape, data in sorted(tensors, key=lambda t: t[0]):
        header[name] = {"dtype": "F32", "shape": shape, "data_offsets": [offset, offset + len(data)]}
        offset += len(data)
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)) + text)
        for name, shape, data in sorted(tensors, key=lambda t: t[0]):
            f.write(data)


def main():
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    out = sys.argv[1]
    os.makedirs(out, exist_ok=True)
    config = cifar10_config()
    with open(os.path.join(out, "config.json"), "w") as f:
        json.dump(config, f, indent=2)
    try:
        import torch
        from pytorch_unet import UNet
    except ImportError as e:
        sys.exit(f"{e}: run with /usr/bin/python3 (Debian's python3-torch)")
    torch.manual_seed(0)
    state = UNet({k: v for k, v in config.items() if k != "_class_name"}).state_dict()
    tensors = [(k, list(v.shape), v.contiguous().numpy().astype("<f4").tobytes()) for k, v in state.items()]
    torch.save(state, os.path.join(out, "diffusion_pytorch_model.bin"))
    write_safetensors(os.path.join(out, "diffusion_pytorch_model.safetensors"), tensors)
    n = sum(len(d) // 4 for _, _, d in tensors)
    print(f"{out}: {len(tensors)} tensors, {n} parameters, {4 * n / 1e6:.1f} MB of f32")


if __name__ == "__main__":
    main()
