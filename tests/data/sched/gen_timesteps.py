# Writes timesteps_numpy.txt: diffusers' set_timesteps(N) for every spacing, computed with numpy itself
# (numpy 1.24.2, the version the reference data was made with). Run: python3 gen_timesteps.py > timesteps_numpy.txt
#
# One line per (T, spacing, N): "T spacing N count sum weighted last", where the array is exactly what diffusers
# stores (trailing may have N+1 entries ending in -1), sum = Σ t, weighted = Σ (i+1)·t, last = final entry.
import numpy as np

def timesteps(T, spacing, N, offset=0):
    if spacing == "linspace":
        return np.linspace(0, T - 1, N).round()[::-1].copy().astype(np.int64)
    if spacing == "leading":
        r = T // N
        return (np.arange(0, N) * r).round()[::-1].copy().astype(np.int64) + offset
    r = T / N
    return np.round(np.arange(T, 0, -r)).astype(np.int64) - 1

print("# numpy", np.__version__)
for T, Ns in ((1000, range(1, 1001)), (4000, range(1, 4001, 7)), (37, range(1, 38))):
    for spacing in ("leading", "trailing", "linspace"):
        for N in Ns:
            ts = timesteps(T, spacing, N)
            w = int(sum((i + 1) * int(t) for i, t in enumerate(ts)))
            print(T, spacing, N, len(ts), int(ts.sum()), w, int(ts[-1]))
