#!/usr/bin/python3
"""Why block-typed (q8_0 …) weights do not take conv2d's Winograd path: one 3×3 conv layer of the cifar10-size U-Net
(128 channels at 32×32, 256 at 16×16; SiLU'd Gaussian input, PyTorch's default uniform weights) in float64, its exact
output against

  - the direct integer path as ddpm.cpp computes it: q8_0 weights (blocks of 32 along K = ci·9), activations
    asymmetric 8-bit per 32 of K;
  - the same quantisation applied in the Winograd F(2×2, 3×3) domain: U = G g Gᵀ per (position, co) row and
    V = Bᵀ d B per (position, tile) column, blocks of 32 input channels.

    /usr/bin/python3 bench/winograd_int8_error.py       # needs Debian's python3-torch; ~10 s

Measured (session 5): direct int8 0.55 % (weights alone 0.37 %), Winograd int8 1.11 % (transformed weights alone
0.80 %) on both layers: the output transform sums nine products' errors per output, so 8-bit Winograd doubles the
per-layer error, and q8_0's whole-U-Net error (1.16 %) would roughly double with it. Benchmark-only: nothing in the
build imports this."""
import torch, torch.nn.functional as F
torch.manual_seed(0)
D = torch.float64
def q8_rows(a):  # symmetric 8-bit, blocks of 32 along the last dim
    s = a.shape; b = a.reshape(-1, 32)
    scale = b.abs().amax(1, keepdim=True) / 127; scale[scale == 0] = 1
    return (torch.round(b / scale) * scale).reshape(s)
def asym8_cols(a):  # asymmetric 8-bit (min + 254 steps), blocks of 32 along dim 0
    k, n = a.shape; b = a.reshape(k // 32, 32, n)
    lo = b.amin(1, keepdim=True); hi = b.amax(1, keepdim=True); d = (hi - lo) / 254; d[d == 0] = 1
    return (lo + torch.round((b - lo) / d) * d).reshape(k, n)
G = torch.tensor([[1, 0, 0], [.5, .5, .5], [.5, -.5, .5], [0, 0, 1]], dtype=D)
BT = torch.tensor([[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, 1, 0, -1]], dtype=D)
AT = torch.tensor([[1, 1, 1, 0], [0, 1, -1, -1]], dtype=D)
def rel(a, b): return (torch.linalg.norm(a - b) / torch.linalg.norm(b)).item()
for C, HW in [(128, 32), (256, 16)]:
    x = F.silu(torch.randn(1, C, HW, HW, dtype=D))
    bound = 1 / (C * 9) ** 0.5
    w = (torch.rand(C, C, 3, 3, dtype=D) * 2 - 1) * bound
    y = F.conv2d(x, w, padding=1)
    cols = F.unfold(x, 3, padding=1)[0]                       # [C*9, HW*HW]
    y_direct = (q8_rows(w.reshape(C, -1)) @ asym8_cols(cols)).reshape(1, C, HW, HW)
    y_wonly = (q8_rows(w.reshape(C, -1)) @ cols).reshape(1, C, HW, HW)
    U = torch.einsum('ik,ockl,jl->ijoc', G, w, G).reshape(16, C, C)          # [16, Co, Ci]
    xp = F.pad(x, (1, 1, 1, 1))[0]                                          # [C, HW+2, HW+2]
    T = HW // 2
    patches = xp.unfold(1, 4, 2).unfold(2, 4, 2)                            # [C, T, T, 4, 4]
    V = torch.einsum('ik,ctukl,jl->ijctu', BT, patches, BT).reshape(16, C, T * T)
    def finish(M):  # [16, Co, T*T] -> y
        M = M.reshape(4, 4, C, T, T)
        Y = torch.einsum('ik,klctu,jl->ctiuj', AT, M, AT)                      # [C, T, 2, T, 2]
        return Y.reshape(1, C, HW, HW)
    y_wino = finish(U @ V)
    y_wino_q = finish(torch.stack([q8_rows(U[f]) @ asym8_cols(V[f]) for f in range(16)]))
    y_wino_wq = finish(torch.stack([q8_rows(U[f]) @ V[f] for f in range(16)]))
    print(f"C={C} {HW}x{HW}: winograd exact {rel(y_wino, y):.1e}; direct int8 {100*rel(y_direct, y):.3f}% "
          f"(weights only {100*rel(y_wonly, y):.3f}%); winograd int8 {100*rel(y_wino_q, y):.3f}% "
          f"(transformed weights only {100*rel(y_wino_wq, y):.3f}%)")
