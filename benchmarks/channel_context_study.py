#!/usr/bin/env python3
"""How much rate would a channel context save on top of the checkerboard? (a study, not the codec)

    python benchmarks/channel_context_study.py --slices 16,16,32,64,128 --minutes 20 \
        [--model vaecodec/weights/vaecodec-cb64-r3.pt] [--crops-per-image 8] [--out FILE.json]
    python benchmarks/channel_context_study.py --summarize FILE.json [FILE.json ...]

The shipped model's transforms stay frozen: its analysis latents y and its
hyper-synthesis output p do not depend on λ (the gains act after them), so
they are computed once for a pool of training crops and for the 24 Kodak
images. Only the entropy-parameter networks train, on the rate alone, which
costs a small fraction of a full training step.

The channel context (ELIC's idea, on the checkerboard's two passes): the 256
latent channels are split into slices; the anchors are coded slice by slice,
then the non-anchors slice by slice. Slice s sees, besides what the
checkerboard gives it, the already decoded slices < s at positions of its own
parity (centre and diagonals, a 3×3 convolution on the parity-masked input),
through a residual network whose last layer starts at zero: at step 0 the
study model codes exactly as the shipped one. Channels are ordered by their
mean rate on the training crops (most expensive first).

Reported per λ on Kodak: y-bits of the shipped model (rounded latents, its
own estimate), of the fine-tuned checkerboard alone (the control: the same
training without the channel branch) and with the channel branch, and the
PSNR through the float synthesis (the means move the rounding points).
Rate saving ≈ BD-rate gain, since the PSNR barely moves; ``--summarize``
prints the BD-rate (PSNR) of "after" against "before" for saved runs.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402

from vaecodec.coding_model import CodingModel  # noqa: E402
from vaecodec.image import to_model_input  # noqa: E402
from vaecodec.model import LN2, SCALE_MIN, checkerboard_anchor_mask, gaussian_bin_likelihood  # noqa: E402
from vaecodec.model import _proxy, _ste_round as _ste  # noqa: E402  (the training's own rate proxy and rounding)
from vaecodec.image import image_files  # noqa: E402
from vaecodec.training.data import CropPool  # noqa: E402
from vaecodec.training.loss import sample_lambdas  # noqa: E402

EVAL_LAMBDAS = (0.0032, 0.0128, 0.0512, 0.2048, 0.8192, 3.2768)


class ChannelCheckerboard(nn.Module):
    """The shipped checkerboard's context and entropy parameters plus, per slice s > 0, a
    channel-context branch: Δ_s = f_s([params of slice s, g_s(ŷ_<s on this pass's parity)])."""

    def __init__(self, net, slices: list[int], order: torch.Tensor, width: int = 64, hidden: int = 128,
                 channel_branch: bool = True):
        super().__init__()
        self.context = net.context
        self.entropy_parameters = net.entropy_parameters
        self.slices = slices
        self.register_buffer("order", order)
        self.channel_branch = channel_branch
        self.ctx = nn.ModuleList()
        self.delta = nn.ModuleList()
        start = 0
        for s, c in enumerate(slices):
            if s == 0 or not channel_branch:
                self.ctx.append(nn.Identity())
                self.delta.append(nn.Identity())
            else:
                self.ctx.append(nn.Conv2d(start, width, 3, padding=1))
                last = nn.Conv2d(hidden, 2 * c, 1)
                nn.init.zeros_(last.weight)
                nn.init.zeros_(last.bias)
                self.delta.append(nn.Sequential(nn.Conv2d(2 * c + width, hidden, 1), nn.ReLU(),
                                                nn.Conv2d(hidden, hidden, 1), nn.ReLU(), last))
            start += c

    def _params(self, p, ctx):
        if ctx is None:
            ctx = p.new_zeros(p.shape[0], self.context[0].out_channels, *p.shape[2:])
        mu, ls = (p + self.entropy_parameters(torch.cat([p, ctx], 1))).chunk(2, dim=1)
        return mu[:, self.order], ls[:, self.order]

    def bits(self, y, p, log_g, hard: bool):
        """y: (B, M, h, w) in the shipped channel order; p: (B, 2M, h, w); log_g: (B, M, 1, 1)."""
        anchor = checkerboard_anchor_mask(y.shape[2], y.shape[3], y.device)
        y = y[:, self.order]
        log_g = log_g[:, self.order]
        g = torch.exp(log_g)
        inverse = torch.argsort(self.order)  # back to the shipped order, which the networks read
        out_bits = []
        y_hat = torch.zeros_like(y)
        for parity, mask in ((0, anchor), (1, 1 - anchor)):
            ctx = None if parity == 0 else self.context((y_hat * anchor)[:, inverse])
            mu_all, ls_all = self._params(p, ctx)
            start = 0
            for s, c in enumerate(self.slices):
                sl = slice(start, start + c)
                mu, ls = mu_all[:, sl], ls_all[:, sl]
                if s > 0 and self.channel_branch:
                    feat = self.ctx[s](y_hat[:, :start] * mask)
                    d_mu, d_ls = self.delta[s](torch.cat([mu, ls, feat], 1)).chunk(2, dim=1)
                    mu, ls = mu + d_mu, ls + d_ls
                r = (y[:, sl] - mu) * g[:, sl]
                scale = torch.clamp(torch.exp2(ls + log_g[:, sl] / LN2), min=SCALE_MIN)
                b = -torch.log2(gaussian_bin_likelihood(_proxy(r, hard), scale).clamp_min(1e-9))
                out_bits.append((b * mask).flatten(1).sum(1))
                y_hat[:, sl] = y_hat[:, sl] + (_ste(r) / g[:, sl] + mu) * mask
                start += c
        return torch.stack(out_bits, 0).sum(0), y_hat[:, inverse]


@torch.no_grad()
def latents(net, x):
    y = net.analysis(x)
    z = net.hyper_analysis(y)
    z_bits = -torch.log2(net.hyper_prior.likelihood(torch.round(z)).clamp_min(1e-9)).flatten(1).sum(1)
    return y, net.hyper_synthesis(torch.round(z)), z_bits


def summarize(paths: list[str]) -> None:
    from vaecodec.metrics import bd_rate

    for path in paths:
        d = json.loads(Path(path).read_text())
        b, a = d["before"], d["after"]
        bd = bd_rate([r["bpp"] for r in b], [r["psnr"] for r in b], [r["bpp"] for r in a], [r["psnr"] for r in a])
        kind = "control (no channel branch)" if d["control"] else f"slices {d['slices']}"
        print(f"{path}: {kind}, {d['steps']} steps, {d['cpu_seconds'] / 60:.0f} CPU-min: BD-rate {bd:+.2f}% vs "
              f"{d['model']}; rate change per λ " + " ".join(f"{c:+.2f}%" for c in d["rate_change_percent"]))


def main() -> None:
    if sys.argv[1:2] == ["--summarize"]:
        return summarize(sys.argv[2:])
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=str(ROOT / "vaecodec" / "weights" / "vaecodec-cb64-r3.pt"))
    ap.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "train"))
    ap.add_argument("--kodak", default=str(ROOT.parent / "shared" / "data" / "kodak"))
    ap.add_argument("--slices", default="16,16,32,64,128")
    ap.add_argument("--control", action="store_true", help="train without the channel branch (checkerboard only)")
    ap.add_argument("--crops-per-image", type=int, default=8)
    ap.add_argument("--minutes", type=float, default=20.0)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--lr", type=float, default=3e-4)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--cache", default="/tmp/vaecodec-latent-cache.pt", help="latents of the crops and Kodak (reused)")
    ap.add_argument("--eval-every", type=float, default=0.0, help="minutes between rate-only Kodak checks (0: none)")
    ap.add_argument("--save", default=None, help="write the trained entropy networks and the channel order here")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)

    coding = CodingModel.load(args.model)
    net = coding.float_network()
    cfg = coding.config

    cache = Path(args.cache)
    if cache.exists():
        blob = torch.load(cache)
    else:
        t0 = time.time()
        pool = CropPool(args.data, crop=256, crops_per_image=args.crops_per_image, seed=args.seed)
        ys, ps = [], []
        for i in range(0, len(pool.crops), 16):
            x = torch.from_numpy(pool.crops[i:i + 16]).permute(0, 3, 1, 2).float().div_(255.0)
            y, p, _ = latents(net, x)
            ys.append(y)
            ps.append(p.half())
        kodak = []
        for path in image_files(args.kodak):
            from PIL import Image

            with Image.open(path) as im:
                arr = np.asarray(im.convert("RGB"))
            x = to_model_input(arr, 64)
            y, p, zb = latents(net, x)
            kodak.append({"y": y, "p": p, "z_bits": zb, "x": x, "hw": arr.shape[:2]})
        blob = {"y": torch.cat(ys), "p": torch.cat(ps), "kodak": kodak}
        torch.save(blob, cache)
        print(f"cache: {blob['y'].shape[0]} crops, {time.time() - t0:.0f} s", flush=True)
    y_train, p_train = blob["y"], blob["p"]

    slices = [int(v) for v in args.slices.split(",")]
    assert sum(slices) == cfg.latent_channels, "slices must cover every latent channel"
    # Order channels by their mean rate on training crops at a middle λ (costliest first).
    with torch.no_grad():
        lam_mid = torch.full((64,), math.sqrt(cfg.lambdas[0] * cfg.lambdas[-1]))
        probe = ChannelCheckerboard(net, [cfg.latent_channels], torch.arange(cfg.latent_channels), channel_branch=False)
        y, p = y_train[:64], p_train[:64].float()
        log_g = net.log_gain(lam_mid)[:, :, None, None]
        anchor = checkerboard_anchor_mask(y.shape[2], y.shape[3])
        mu, ls = probe._params(p, None)
        r = (y - mu) * torch.exp(log_g)
        b = -torch.log2(gaussian_bin_likelihood(torch.round(r), torch.exp2(ls + log_g / LN2).clamp_min(SCALE_MIN)))
        order = torch.argsort((b * anchor).mean((0, 2, 3)), descending=True)
    study = ChannelCheckerboard(copy.deepcopy(net), slices, order, channel_branch=not args.control)
    study.train()
    params = list(study.parameters())
    for q in params:
        q.requires_grad_(True)
    opt = torch.optim.Adam(params, lr=args.lr)
    gen = torch.Generator().manual_seed(args.seed)

    def kodak_eval(model, with_psnr: bool = True) -> list[dict]:
        model.eval()
        rows = []
        with torch.no_grad():
            for lam in EVAL_LAMBDAS:
                log_g = net.log_gain(torch.tensor([lam]))[:, :, None, None]
                bits, psnr = [], []
                for k in blob["kodak"]:
                    b, y_hat = model.bits(k["y"], k["p"], log_g, hard=True)
                    h, w = k["hw"]
                    bits.append(((b + k["z_bits"]).item()) / (h * w))
                    if not with_psnr:
                        continue
                    x_hat = torch.round(net.synthesis(y_hat)[:, :, :h, :w].clamp(0, 1) * 255) / 255
                    mse = (x_hat - k["x"][:, :, :h, :w]).pow(2).mean().item()
                    psnr.append(10 * math.log10(1 / mse))
                rows.append({"lambda": lam, "bpp": float(np.mean(bits)), "psnr": float(np.mean(psnr)) if psnr else None})
        model.train()
        return rows

    before = kodak_eval(study)
    print("before:", "  ".join(f"{r['lambda']:g}: {r['bpp']:.4f}/{r['psnr']:.2f}" for r in before), flush=True)
    t0, step, cpu0 = time.time(), 0, time.process_time()
    n = y_train.shape[0]
    checks, next_check = [], args.eval_every * 60 if args.eval_every > 0 else math.inf
    while time.time() - t0 < args.minutes * 60:
        if time.time() - t0 >= next_check:
            rows = kodak_eval(study, with_psnr=False)
            change = [100 * (a["bpp"] / b["bpp"] - 1) for a, b in zip(rows, before)]
            checks.append({"step": step, "cpu_seconds": time.process_time() - cpu0, "rate_change_percent": change})
            print(f"step {step}: rate change %", "  ".join(f"{c:+.2f}" for c in change), flush=True)
            next_check += args.eval_every * 60
        idx = torch.randint(0, n, (args.batch,), generator=gen)
        lam = sample_lambdas(cfg, args.batch, gen)
        log_g = net.log_gain(lam)[:, :, None, None]
        bits, _ = study.bits(y_train[idx], p_train[idx].float(), log_g, hard=False)
        weight = torch.sqrt(math.sqrt(cfg.lambdas[0] * cfg.lambdas[-1]) / lam)
        loss = (weight * bits / (256 * 256)).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        step += 1
        if step % 200 == 0:
            print(f"step {step} loss {loss.item():.4f} {time.time() - t0:.0f} s", flush=True)
    after = kodak_eval(study)
    print("after: ", "  ".join(f"{r['lambda']:g}: {r['bpp']:.4f}/{r['psnr']:.2f}" for r in after), flush=True)
    saving = [100 * (a["bpp"] / b["bpp"] - 1) for a, b in zip(after, before)]
    print("rate change %:", "  ".join(f"{s:+.2f}" for s in saving), flush=True)
    if args.out:
        Path(args.out).write_text(json.dumps({
            "command": "python benchmarks/channel_context_study.py " + " ".join(sys.argv[1:]),
            "model": coding.model_id, "slices": slices, "control": args.control, "steps": step,
            "cpu_seconds": time.process_time() - cpu0, "crops": n, "before": before, "after": after,
            "rate_change_percent": saving, "checks": checks}, indent=1) + "\n")
    if args.save:
        torch.save({"model": coding.model_id, "slices": slices, "order": order, "state_dict": study.state_dict()}, args.save)


if __name__ == "__main__":
    main()
