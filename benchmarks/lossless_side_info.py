#!/usr/bin/env python3
"""Does the lossy VAE's reconstruction pay for itself as side information for the pixel model?

    python benchmarks/lossless_side_info.py Q STEPS xhat|none

Trains the pixel-model MLPs (64 hidden) for STEPS on every 3rd training photo, with (xhat) or
without (none) 8 features of the shipped lossy model's decoded image at quality Q around each
sub-pixel, and prints the ideal bits per sub-pixel on every 3rd Kodak image: residual + the lossy
file's own bits. Results of the runs quoted in issue 8's note: benchmarks/results/lossless-ablations/.
"""

import glob, sys, time
import numpy as np, torch
from PIL import Image
ROOT = __import__("pathlib").Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
SHARED = ROOT.parent / "shared" / "data"
torch.set_num_threads(1)
from vaecodec.api import Codec
from vaecodec.pixel_model import gather_context, padded_tile, PAD
from vaecodec.training.pixel import PixelNet, laplace_bits
Q = int(sys.argv[1]); STEPS = int(sys.argv[2]); USE = sys.argv[3] == 'xhat'
codec = Codec()
XOFF = [(0,0),(0,1),(1,0),(1,1),(0,-1),(-1,0),(1,-1),(-1,1)]
def feats(img, rec, rows, cols, k):
    H, W, _ = img.shape
    buf = padded_tile(img.astype(np.int32), H, W, 3)
    ctx, ref = gather_context(buf, rows, cols, k)
    if not USE: return ctx, ref
    R = np.pad(rec.astype(np.int32), ((2,2),(2,2),(0,0)), mode='edge')
    r0 = (buf[rows+PAD-1, cols+PAD] + buf[rows+PAD, cols+PAD-1] + 1) >> 1
    x = np.concatenate([R[rows+2+dy, cols+2+dx] - r0 for dy, dx in XOFF], 1)
    return np.concatenate([ctx, x], 1), ref
rng = np.random.default_rng(0)
def prep(files, per):
    data = [[], [], []]; bits = []
    for f in files:
        img = np.asarray(Image.open(f).convert('RGB'))
        if USE:
            d = codec.compress(img, quality=Q); rec = codec.decompress_array(d); bits.append(8*len(d)/img[...,0].size/3)
        else: rec = None
        H, W, _ = img.shape
        if per:
            rows = rng.integers(0, H, per); cols = rng.integers(0, W, per)
        else:
            rows, cols = np.divmod(np.arange(H*W), W)
        for k in range(3):
            c, r = feats(img, rec, rows, cols, k); data[k].append((c, r, img[rows, cols, k]))
    return [tuple(torch.from_numpy(np.concatenate([d[i] for d in dk]).astype(np.float32)) for i in range(3)) for dk in data], bits
t = time.time()
train, tb = prep(sorted(glob.glob(str(SHARED / 'train' / '*')))[::3], 20000)
test = [prep([f], 0) for f in sorted(glob.glob(str(SHARED / 'kodak' / '*')))[::3]]
print('prep', time.time() - t, 'lossy bpsp train', np.mean(tb) if tb else 0, flush=True)
nets = [PixelNet(train[k][0].shape[1], 64, 2) for k in range(3)]
opt = torch.optim.Adam([p for n in nets for p in n.parameters()], 2e-3)
N = train[0][0].shape[0]
for step in range(STEPS):
    if step == int(0.7 * STEPS):
        for g in opt.param_groups: g['lr'] = 5e-4
    idx = torch.from_numpy(rng.integers(0, N, 4096))
    loss = sum(laplace_bits(x[idx], *n(c[idx], r[idx])).mean() for n, (c, r, x) in zip(nets, train)) / 3
    opt.zero_grad(); loss.backward(); opt.step()
    if step % 2000 == 0: print(step, loss.item(), flush=True)
res = []
with torch.no_grad():
    for (data, bits) in test:
        s = sum(laplace_bits(x, *n(c, r)).mean().item() for n, (c, r, x) in zip(nets, data)) / 3
        res.append((s, bits[0] if bits else 0))
res = np.array(res)
print(f'Q={Q} use={USE}: residual {res[:,0].mean():.4f} + lossy {res[:,1].mean():.4f} = {res.sum(1).mean():.4f} bpsp')
