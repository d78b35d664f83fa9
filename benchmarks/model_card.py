#!/usr/bin/env python3
"""Write vaecodec/weights/MODEL_CARD.md from the shipped model and the saved results.

    python benchmarks/model_card.py

Reads the shipped model (architecture, parameters, MACs per pixel counted by
torch's FLOP counter), vaecodec/weights/training.json (written by
bin/export-model), benchmarks/results/kodak.json and speed.json. Refuses to
write if those results describe other weights than the ones shipped.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
from torch.utils.flop_counter import FlopCounterMode  # noqa: E402

import vaecodec  # noqa: E402
from vaecodec.api import SHIPPED_MODEL  # noqa: E402
from vaecodec.model import build_model  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"


def macs_per_pixel(config, h=512, w=768) -> dict:
    net = build_model(config).eval()
    x = torch.rand(1, 3, h, w)
    y = torch.zeros(1, config.latent_channels, h // 16, w // 16)
    parts = [("analysis + hyper-analysis (encoder only)", lambda: net.hyper_analysis(net.analysis(x))),
             ("hyper-synthesis (both sides)", lambda: net.hyper_synthesis(torch.zeros(1, config.hyper_channels, h // 64, w // 64)))]
    if config.kind == "checkerboard":
        hyper = torch.zeros(1, 2 * config.latent_channels, h // 16, w // 16)
        parts.append(("checkerboard context + entropy parameters, both passes (both sides)",
                      lambda: (net.params_from(hyper, None), net.params_from(hyper, net.context(y)))))
    if config.channel_slices:
        def channel_branch():
            for s, ch in enumerate(config.slice_bounds[1:], 1):
                mu = torch.zeros(1, ch.stop - ch.start, h // 16, w // 16)
                for _ in range(2):  # both passes
                    net.slice_params(s, mu, mu, y[:, :ch.start])

        parts.append(("channel context, every slice of both passes (both sides)", channel_branch))
    parts.append(("synthesis (decoder)", lambda: net.synthesis(y)))
    out = {}
    with torch.no_grad():
        for name, fn in parts:
            with FlopCounterMode(display=False) as fc:
                fn()
            out[name] = fc.get_total_flops() / 2 / (h * w)
    return out


def stable_rates(training: dict) -> str:
    """The stable phase's learning rate(s) from the history's rate changes (``vaecodec train --lr``), e.g.
    "lr 1e-3, 5e-4 from step 408,162"; without any, the rate the export recorded (runs before rates were
    recorded held 1e-3)."""
    def short(x: float) -> str:  # 1e-3, 5e-4, 2.5e-4
        mantissa, exponent = f"{x:.6e}".split("e")
        return f"{mantissa.rstrip('0').rstrip('.')}e{int(exponent)}"

    changes = [h for h in training.get("history", []) if "learning_rate" in h]
    first = changes[0]["learning_rate"]["from"] if changes else training.get("lr") or 1e-3
    return "lr " + ", ".join([short(first)] + [f"{short(h['learning_rate']['to'])} from step {h['step']:,}" for h in changes])


def main():
    codec = vaecodec.Codec()
    m = codec.model
    training = json.loads((ROOT / "vaecodec" / "weights" / "training.json").read_text())
    kodak = json.loads((RESULTS / "kodak.json").read_text())
    speed = json.loads((RESULTS / "speed.json").read_text())
    vae = next(c for c in kodak["curves"] if c["name"] == "vaecodec")
    if m.weight_hash.hex() not in vae["library"] or m.weight_hash.hex() not in speed["model"]:
        raise SystemExit("benchmarks/results describe other weights: rerun benchmarks/kodak.py and speed.py first")
    summary = {r["codec"]: r for r in kodak["summary"]}
    macs = macs_per_pixel(m.config)
    cfg = m.config
    if cfg.kind == "checkerboard":
        architecture = (
            f"Mean-scale hyperprior VAE (Ballé et al. 2018; Minnen et al. 2018) with a checkerboard context model "
            f"(He et al. 2021: anchors first, then the other half of the latents conditioned on them, two parallel passes "
            f"per 1024² tile) and λ-conditioned per-channel gains (Cui et al. 2021): one model for qualities 1–100. "
            f"N = {cfg.channels} at 1/2 and 1/4 resolution, {cfg.wide} at 1/8 and 1/16 and in the hyper networks, "
            f"M = {cfg.latent_channels} latent channels, {cfg.hyper_channels} hyper-latent channels; context: one 5×5 "
            f"convolution on the anchors ({cfg.context_channels} channels) and 1×1 entropy-parameter layers; "
            f"{cfg.num_scales} scales. Analysis: four 5×5 stride-2 convolutions with simplified GDN (Johnston et al. "
            f"2019); synthesis: four 5×5 stride-2 transposed convolutions with inverse simplified GDN.")
        if cfg.channel_slices:
            from vaecodec.model import CHANNEL_CONTEXT_WIDTH, CHANNEL_HIDDEN

            architecture += (
                f" Channel context (He et al. 2022, ELIC): each checkerboard pass is coded in channel slices of "
                f"{', '.join(map(str, cfg.channel_slices))} (costliest channels first), each slice's parameters "
                f"corrected from the slices before it in the same pass (a 3×3 convolution to {CHANNEL_CONTEXT_WIDTH} "
                f"features, then three 1×1 layers {CHANNEL_HIDDEN} wide): {2 * len(cfg.channel_slices)} parallel "
                f"passes per tile.")
        recipe = (f"Adam at a constant {stable_rates(training)} (the resumable stable phase, `checkpoints/cb-stable.pt`), "
                  "then an anneal of a copy (cosine decay to 5% over 6,000 steps); per-sample λ, log-uniform over the anchors; "
                  "additive-noise rate proxy, straight-through rounding for the decoder; 128² patches (batch 8) and "
                  "256² patches (batch 2) alternately; non-finite updates skipped; the shipped weights are the "
                  "exponential moving average (decay 0.999) of the annealed run")
        command = ("`vaecodec train checkpoints/cb-stable.pt --model cb64-w128-m256 --data ../shared/data/train "
                   "--eval ../shared/data/kodak` (resumed every session), then `vaecodec anneal checkpoints/cb-stable.pt "
                   "checkpoints/cb-annealed.pt --data ../shared/data/train --steps 6000` and `bin/export-model "
                   f"checkpoints/cb-annealed.pt vaecodec/weights/{SHIPPED_MODEL} --model-id {m.model_id}`")
        if cfg.channel_slices:
            recipe = recipe.replace("cb-stable.pt`)", "cb-stable.pt`, grown a channel context and continued as "
                                    "`checkpoints/cc-stable.pt`)")
            command = ("`vaecodec train checkpoints/cb-stable.pt --model cb64-w128-m256 --data ../shared/data/train "
                       "--eval ../shared/data/kodak` (resumed every session), `vaecodec add-channel-context "
                       "checkpoints/cb-stable.pt checkpoints/cc-stable.pt --data ../shared/data/train`, `torchrun "
                       "--nproc_per_node 2 -m vaecodec train checkpoints/cc-stable.pt --data ../shared/data/train --eval "
                       "../shared/data/kodak --threads 1 --batch-size 4` (resumed every session, lately as two single-thread "
                       "processes of batch 4, the same global batch as one of 8), then `torchrun --nproc_per_node 2 -m "
                       "vaecodec anneal checkpoints/cc-stable.pt checkpoints/cc-annealed.pt --data ../shared/data/train "
                       "--threads 1 --batch-size 4 --steps 6000` and "
                       f"`bin/export-model checkpoints/cc-annealed.pt vaecodec/weights/{SHIPPED_MODEL} --model-id {m.model_id}`")
        if cfg.synthesis_bits == 8:
            recipe += ("; the synthesis trained as the 8-bit decoder computes (quantization-aware: weights and "
                       "activations rounded in the forward pass, straight-through gradients, the activations' "
                       "per-channel steps learned, LSQ)")
            command = ("`vaecodec train checkpoints/cb-stable.pt --model cb64-w128-m256 --data ../shared/data/train "
                       "--eval ../shared/data/kodak` (resumed every session), then `vaecodec fork-int8 "
                       "checkpoints/cb-stable.pt checkpoints/cb-s8-stable.pt --data ../shared/data/train`, `vaecodec "
                       "anneal checkpoints/cb-s8-stable.pt checkpoints/cb-s8-annealed.pt --data ../shared/data/train "
                       f"--steps 6000` and `bin/export-model checkpoints/cb-s8-annealed.pt vaecodec/weights/{SHIPPED_MODEL}`")
        seen = ""
    else:
        architecture = (
            f"Mean-scale hyperprior VAE (Ballé et al. 2018; Minnen et al. 2018) with λ-conditioned per-channel gains "
            f"(Cui et al. 2021): one model for qualities 1–100. N = {cfg.channels}, M = {cfg.latent_channels} latent "
            f"channels, {cfg.hyper_channels} hyper-latent channels. Analysis: four 5×5 stride-2 convolutions with "
            f"simplified GDN (Johnston et al. 2019); synthesis: four 5×5 stride-2 transposed convolutions with inverse "
            f"simplified GDN; hyper-transforms as in Minnen et al. with ReLU in the hyper-synthesis.")
        recipe = ("Adam, lr 1e-3 after 100 warm-up steps, cosine decay to 5% over the last 30% of the planned steps, "
                  "gradient clipping at 1.0; per-sample λ, log-uniform over the anchors, each sample's Lagrangian weighted "
                  "by sqrt(λ_mid/λ); additive-noise rate proxy, straight-through rounding for the decoder; the shipped "
                  "weights are the exponential moving average (decay 0.999) of the trained weights")
        command = (f"`bin/train-model --data ../shared/data/train --checkpoint checkpoints/train-state.pt --total-steps "
                   f"{training['step']} --eval ../shared/data/kodak` (resumed several times), then `bin/export-model "
                   f"checkpoints/train-state.pt vaecodec/weights/vaecodec-hp64.pt --quality-span "
                   f"{' '.join(map(str, training.get('quality_span', [])))}`")
        seen = f" ({training['step'] * 8 * 128 * 128 / 1e9:.2f} Gpixel seen)"
    base = None  # a derived model file (the 10-bit latent programs over a shipped model's weights)
    blob = torch.load(ROOT / "vaecodec" / "weights" / SHIPPED_MODEL, map_location="cpu", weights_only=True)
    if "base" in blob:
        base = blob["base"]
        command = command.replace(f"vaecodec/weights/{SHIPPED_MODEL} --model-id {m.model_id}`",
                                  f"vaecodec/weights/{base['file']} --model-id {base['model_id']}`")
    scale = training.get("quality_scale")
    if scale:
        q75 = m.quality_position(75)
        quality_scale = (
            f"quality q sits at the anchor position (log-linear in λ between anchors) where the model's PSNR matches "
            f"JPEG's (4:2:0) at quality q, measured at export on {len(scale['images'])} training images halved and "
            f"cropped to {scale['crop']}² (`bin/export-model --jpeg-quality-scale`; the measurements are in "
            f"`training.json`); qualities whose JPEG PSNR lies beyond the anchors' reach spread evenly to the first "
            f"and last anchor. Quality 75 sits at position {q75:.2f}. How it holds on Kodak: "
            f"`benchmarks/results/quality-scale.md`.")
        exported = base["model_id"] if base else m.model_id
        command = command.replace(f"--model-id {exported}`",
                                  f"--model-id {exported} --jpeg-quality-scale ../shared/data/train`")
    if base:
        narrowed = "the 10-bit latent programs" + {11: " and the 11-bit synthesis", 12: " and the synthesis with 11-bit "
                                                     "weights and 12-bit activations"}.get(cfg.synthesis_bits, "")
        command += (f", then `bin/narrow-latents vaecodec/weights/{base['file']} vaecodec/weights/{SHIPPED_MODEL} "
                    f"--data ../shared/data/train --model-id {m.model_id}"
                    + {11: " --synthesis", 12: " --synthesis 12"}.get(cfg.synthesis_bits, "")
                    + f"` ({narrowed}: the same weights and quality tables as `{base['model_id']}`, whose file this "
                    "one names)")
    else:
        quality_scale = "quality q sits at anchor position lo + (q−1)/99·(hi − lo), log-linearly in λ."
    lines = [
        f"# Model card: `{m.model_id}` (weight hash `{m.weight_hash.hex()}`)", "",
        "Generated by `python benchmarks/model_card.py` from the shipped weights and `benchmarks/results/`.", "",
        "## Architecture", "",
        f"{architecture} {len(cfg.lambdas)} gain anchors at λ = {', '.join(map(str, cfg.lambdas))} (distortion weight "
        f"on 255²·MSE); {quality_scale}", "",
        f"- quality span: quality 1 ↔ λ = {m.quality_lambda(1):.5f}, quality 100 ↔ λ = {m.quality_lambda(100):.4f} "
        f"(anchor positions {[round(v, 4) for v in training.get('quality_span', [])]}; no quality lies beyond the "
        "trained anchors unless the span says so)",
        f"- parameters: {m.num_parameters:,} (shipped in fp16, with integer coding tables)",
        *[f"- {k}: {v / 1e3:.1f} kMAC per pixel" for k, v in macs.items()],
        ("- decoder arithmetic: the networks that feed the entropy coder (hyper-synthesis, checkerboard and channel "
         "contexts, entropy parameters) are 10-bit integer programs (activations within ±511 at one power-of-two step "
         "per layer input, calibrated on 6 training images with one bit of headroom; weights rounded per output "
         "channel to ±512; sums exact in float32 runs below 2^24, joined and rescaled exactly in float64; "
         "`vaecodec/narrow.py`); the synthesis is " + (
             f"an integer program of the same kind with 11-bit weights and {cfg.synthesis_bits}-bit activations "
             f"(activations within ±{2 ** (cfg.synthesis_bits - 1) - 1}"
             " at a power-of-two step per channel at every point, calibrated the same way; weights and inverse-GDN "
             "norm weights rounded per output channel to ±1024; the rescaling folded into the float32 products)"
             if cfg.synthesis_bits in (11, 12)
             else "integer fixed point (12 fractional bits for activations, 14-bit weights) evaluated exactly in "
             "float64") + "; every decoder number is an integer, the same on any machine. The "
         "encoder's analysis runs in float32." if cfg.latent_bits == 10 else
         "- decoder arithmetic: the synthesis is an 8-bit integer program (int8 activations and weights, per-channel "
         "steps, int32 sums by int8 matrix products, integer rescaling; `vaecodec/int8_synthesis.py`); the "
         "hyper-synthesis and context networks are integer fixed point (12 fractional bits for activations, 14-bit "
         "weights) evaluated exactly in float64; every decoder number is an integer, the same on any machine. The "
         "encoder's analysis runs in float32." if cfg.synthesis_bits == 8 else
         "- decoder arithmetic: integer fixed point (12 fractional bits for activations, 14-bit weights) evaluated "
         "exactly in float64; the encoder's analysis runs in float32."), "",
        "## Training", "",
        "- data: `shared/data/train` (231 photos, about 150 Mpixel); random downscaling (0.5–1×), random crops with "
        "flips; Kodak never used for training (only for the periodic estimate in the log)",
        f"- steps: {training['step']:,}{seen}; CPU time: **{training['cpu_hours']:.2f} CPU-hours** on 2 cores (no GPU)",
        f"- recipe: {recipe}",
        f"- command: {command}", "",
    ]
    forked = [h for h in training.get("history", []) if "int8_synthesis_from_step" in h]
    if forked:
        lines.insert(len(lines) - 1,
                     f"- 8-bit synthesis: forked from the stable run at step {forked[0]['int8_synthesis_from_step']:,} "
                     f"(`vaecodec fork-int8`: every weight kept, the rounding steps calibrated on "
                     f"{forked[0]['calibration_crops']} training crops), then annealed with the synthesis rounded as "
                     "it decodes")
    widened = [h for h in training.get("history", []) if "widened_from" in h]
    if widened:
        lines.insert(len(lines) - 1,
                     f"- warm start: widened from 0.1's model at step {widened[0]['old_step']:,} (Net2Net-style, the same "
                     f"function at step 0), so its {widened[0]['cpu_hours']:.2f} CPU-hours are counted in the total above")
    training = {**training, "history": [h for h in training.get("history", []) if "estimate" in h]}
    if training.get("history"):
        lines += ["Training log (estimated from the model's likelihoods on Kodak, not from files; a new table "
                  "where re-anchoring moved the λ the estimate is taken at):", ""]
        header = None
        for h in training["history"]:
            lams = [r["lambda"] for r in h["estimate"]]
            if lams != header:
                if header is not None:
                    lines.append("")
                header = lams
                lines += ["| step | CPU-h | " + " | ".join(f"λ={lam}: bpp / PSNR" for lam in lams) + " |",
                          "|---|---|" + "---|" * len(lams)]
            lines.append(f"| {h['step']} | {h['cpu_hours']:.2f} | " +
                         " | ".join(f"{r['bpp']:.3f} / {r['psnr']:.2f}" for r in h["estimate"]) + " |")
        lines.append("")
    lines += ["## Kodak (24 images), measured from real files", "",
              f"From `{kodak['command']}` ({kodak['environment'].get('date', '')}); rate = whole .vae file.", "",
              "| quality | bpp | PSNR (RGB) | MS-SSIM | model estimate bpp | encode ms | decode ms (CPU) |", "|---|---|---|---|---|---|---|"]
    for p in vae["points"]:
        lines.append(f"| {p['setting'].split('=')[1]} | {p['bpp']:.4f} | {p['psnr']:.2f} | {p['ms_ssim']:.4f} | "
                     f"{p['information_bpp']:.4f} | {1e3 * p['encode_cpu_s']:.0f} | {1e3 * p['decode_cpu_s']:.0f} |")
    lines += ["", "| codec | BD-rate (PSNR) vs JPEG | PSNR @0.25 | @0.5 | @0.75 | @1.0 |", "|---|---|---|---|---|---|"]
    fmt = lambda v: "–" if v is None else f"{v:.2f}"  # noqa: E731
    for name in ("vaecodec", "jpeg", "webp", "jxl", "avif-psnr", "bmshj2018-hyperprior", "mbt2018-mean"):
        if name in summary:
            r = summary[name]
            bd = "–" if r.get("bd_rate_psnr") is None else f"{r['bd_rate_psnr']:+.1f}%"
            lines.append(f"| {name}{' (published)' if r['published'] else ''} | {bd} | "
                         + " | ".join(fmt(r[f'psnr_at_{x}']) for x in (0.25, 0.5, 0.75, 1.0)) + " |")
    one = speed["stages"]["1"]
    enc = sum(v["cpu_ms"] for k, v in one.items() if k.startswith("encode"))
    dec = sum(v["cpu_ms"] for k, v in one.items() if k.startswith("decode"))
    lines += ["", "## Speed", "",
              f"Per Kodak image at quality 50, 1 thread: encode {enc:.0f} ms, decode {dec:.0f} ms of CPU time, "
              f"{speed['vs_avif']['encode_plus_decode']:.2f}× AVIF speed 6's encode + decode of the same images in the same run "
              f"(`{speed['command']}`; stage split in `benchmarks/results/speed.md`; machines of this kind differ ~3.5× "
              "in speed, the ratio is what carries)." + ("" if cfg.synthesis_bits == 8 else
                                                         " The exact synthesis dominates decoding.")
              + f" In that run the encoder's analysis ran in {speed['analysis']}"
              + (" and every decoder network on exact float32 products (narrow integer programs)."
                 if cfg.synthesis_bits in (11, 12) and cfg.latent_bits == 10 else
                 " and the widest exact products " + ("on int8 kernels." if speed["int8_kernels"] else
                 "in float64 (no fast int8 kernels: a CPU without AMX or VNNI, where the ratio is higher than on one "
                 "with them).")),
              "", "## Limitations", "",
              f"- Trained for {training['cpu_hours']:.1f} CPU-hours on 2 cores: far from the GPU-trained published "
              "models of the same family; see the BD-rates above.",
              ("- Decoding is exact on any machine; int8 matrix products run through `torch._int_mm` where a probe at "
               "load finds them exact, else through float32 products of at most 1,040 terms (exact, slower)."
               if cfg.synthesis_bits == 8 else
               "- Decoding is exact on any IEEE-754 machine; its narrow programs round the synthesis to 11 bits and "
               "the latent networks to 10 bits without retraining, at a small cost against the float64 programs "
               "(`benchmarks/results/model-comparison-r5s.json`, `model-comparison-r5n.json`)."
               if cfg.synthesis_bits == 11 else
               "- Decoding is exact on any IEEE-754 machine; its narrow programs round the synthesis's weights to 11 "
               "bits and its activations to 12, the latent networks to 10 bits, without retraining, at a small cost "
               "against the float64 programs (`benchmarks/results/model-comparison-"
               + m.model_id.rsplit("-", 1)[-1] + ".json`, from `compare_models.py` on both models' Kodak runs)."
               if cfg.synthesis_bits == 12 else
               "- Decoding is exact on any IEEE-754 machine, but the exact decoder runs in float64 on the CPU and is slower than a float32 one would be."),
              "- Quality is tuned for PSNR (MSE loss)."]
    (ROOT / "vaecodec" / "weights" / "MODEL_CARD.md").write_text("\n".join(lines) + "\n")
    print("wrote vaecodec/weights/MODEL_CARD.md")


if __name__ == "__main__":
    main()
