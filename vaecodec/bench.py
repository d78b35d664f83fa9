"""Rate–distortion benchmarks: every codec, the same images, one run.

Each codec encodes every image at every setting of its sweep; the rate is the
byte length of what it wrote (for vaecodec the whole .vae file, header
included), and quality is measured on the decoded pixels. Per setting the
report gives mean bpp, mean PSNR and MS-SSIM (means of per-image values),
MS-SSIM in dB, and mean encode/decode CPU and wall time; per codec the
BD-rate against a reference codec and PSNR interpolated at 0.25–1.0 bpp.
Published learned-codec curves (CompressAI's Kodak results files) enter the
BD-rate table and the plot, marked as published, never as measured.

Images are benchmarked as RGB (grayscale inputs are expanded), so that all
codecs see the same pixels.

Typical workflow::

    report = run_benchmark(paths, ["vaecodec", "jpeg"], jobs=2)
    print(format_table(report))
    save_json(report, "results.json"); save_plot(report, "rd.png")
"""

from __future__ import annotations

import json
import os
import platform
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from importlib import resources
from pathlib import Path

import numpy as np
from PIL import Image

from .baselines import CodecUnavailable, make_codec
from .image import image_files
from .metrics import bd_rate, ms_ssim, ms_ssim_db, psnr, quality_at_rate

__all__ = ["Measurement", "CurvePoint", "Curve", "BenchReport", "run_benchmark", "collect_images",
           "format_table", "save_json", "save_plot", "save_markdown", "published_curves"]

RATES = (0.25, 0.5, 0.75, 1.0)


@dataclass
class Measurement:
    """One image coded at one setting."""

    codec: str
    setting: str
    image: str
    pixels: int
    num_bytes: int
    bpp: float
    psnr: float
    ms_ssim: float
    encode_cpu_s: float
    decode_cpu_s: float
    encode_wall_s: float
    decode_wall_s: float
    information_bits: float | None = None


@dataclass
class CurvePoint:
    """One setting, averaged over the images."""

    setting: str
    bpp: float
    psnr: float
    ms_ssim: float
    ms_ssim_db: float
    encode_cpu_s: float
    decode_cpu_s: float
    encode_wall_s: float
    decode_wall_s: float
    information_bpp: float | None = None


@dataclass
class Curve:
    name: str
    library: str
    settings: str
    points: list[CurvePoint]
    published: bool = False
    source: str = ""

    def rates(self):
        return [p.bpp for p in self.points]

    def psnrs(self):
        return [p.psnr for p in self.points]

    def ms_ssim_dbs(self):
        return [p.ms_ssim_db for p in self.points]


@dataclass
class BenchReport:
    curves: list[Curve]
    measurements: list[Measurement]
    reference: str
    images: list[str]
    skipped: dict[str, str] = field(default_factory=dict)
    environment: dict = field(default_factory=dict)
    command: str = ""

    def curve(self, name: str) -> Curve:
        return next(c for c in self.curves if c.name == name)

    def summary(self) -> list[dict]:
        """Per curve: BD-rates vs the reference and PSNR at the standard rates."""
        try:
            ref = self.curve(self.reference)
        except StopIteration:
            ref = None
        rows = []
        for c in self.curves:
            row = {"codec": c.name, "published": c.published}
            if ref is not None:
                row["bd_rate_psnr"] = bd_rate(ref.rates(), ref.psnrs(), c.rates(), c.psnrs())
                row["bd_rate_ms_ssim_db"] = bd_rate(ref.rates(), ref.ms_ssim_dbs(), c.rates(), c.ms_ssim_dbs())
            for r in RATES:
                row[f"psnr_at_{r}"] = quality_at_rate(c.rates(), c.psnrs(), r)
            rows.append(row)
        return rows


def collect_images(inputs) -> list[Path]:
    """Files and folders (their image files, sorted) → image paths."""
    paths = []
    for item in map(Path, inputs):
        if item.is_dir():
            paths += image_files(item)
        elif item.is_file():
            paths.append(item)
        else:
            raise FileNotFoundError(f"no such file or folder: {item}")
    if not paths:
        raise FileNotFoundError("no images to benchmark")
    return paths


def published_curves() -> list[Curve]:
    """CompressAI's published Kodak curves, kept as data in the package."""
    data = json.loads((resources.files("vaecodec") / "published_kodak.json").read_text())
    curves = []
    for name, c in data["curves"].items():
        points = [CurvePoint(f"point {i + 1}", b, p, m, ms_ssim_db(m), float("nan"), float("nan"), float("nan"), float("nan"))
                  for i, (b, p, m) in enumerate(zip(c["bpp"], c["psnr"], c["ms_ssim"]))]
        curves.append(Curve(name, "published", "GPU-trained, CompressAI results", points, published=True,
                            source=f"{data['source']} {c['path']} @ {data['commit'][:10]}"))
    return curves


# ----- workers ------------------------------------------------------------------------------
_CODECS: dict = {}


def _worker_init(threads: int) -> None:
    try:
        import torch

        torch.set_num_threads(threads)
    except ImportError:
        pass


def _load_rgb(path: str) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))


def _measure(task) -> list[Measurement]:
    name, model, path, settings = task
    key = (name, model)
    if key not in _CODECS:
        _CODECS[key] = make_codec(name, model)
    codec = _CODECS[key]
    pixels = _load_rgb(path)
    out = []
    for setting in settings:
        c0, w0 = time.process_time(), time.perf_counter()
        data, info = codec.encode(pixels, setting)
        c1, w1 = time.process_time(), time.perf_counter()
        decoded = codec.decode(data)
        c2, w2 = time.process_time(), time.perf_counter()
        n = pixels.shape[0] * pixels.shape[1]
        out.append(Measurement(name, f"{setting[0]}={setting[1]}", Path(path).name, n, len(data), 8 * len(data) / n,
                               psnr(pixels, decoded), ms_ssim(pixels, decoded), c1 - c0, c2 - c1, w1 - w0, w2 - w1, info))
    return out


def _aggregate(ms: list[Measurement], setting_order: list[str]) -> list[CurvePoint]:
    points = []
    for s in setting_order:
        rows = [m for m in ms if m.setting == s]
        if not rows:
            continue
        mean = lambda f: float(np.mean([getattr(m, f) for m in rows]))  # noqa: E731
        info = [m.information_bits for m in rows]
        mssim = mean("ms_ssim")
        points.append(CurvePoint(s, mean("bpp"), mean("psnr"), mssim, ms_ssim_db(mssim), mean("encode_cpu_s"),
                                 mean("decode_cpu_s"), mean("encode_wall_s"), mean("decode_wall_s"),
                                 float(np.mean([b / m.pixels for b, m in zip(info, rows)])) if None not in info else None))
    return sorted(points, key=lambda p: p.bpp)


def environment() -> dict:
    import PIL

    env = {"python": platform.python_version(), "platform": platform.platform(), "machine": platform.machine(),
           "cpus": os.cpu_count(), "pillow": PIL.__version__, "numpy": np.__version__,
           "date": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())}
    try:
        with open("/proc/cpuinfo") as f:
            env["cpu"] = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), "")
    except OSError:
        pass
    from importlib import metadata

    for mod in ("torch", "constriction", "imagecodecs"):
        try:
            env[mod] = metadata.version(mod)
        except metadata.PackageNotFoundError:
            pass
    return env


def is_kodak(paths) -> bool:
    """True for the 24 Kodak images (kodim01..kodim24), the set the published curves were measured on."""
    return sorted(Path(p).stem for p in paths) == [f"kodim{i:02d}" for i in range(1, 25)]


def run_benchmark(images, codecs, reference: str = "jpeg", model: str | None = None, jobs: int = 1,
                  settings: dict[str, tuple] | None = None, progress=None, published: bool | None = None) -> BenchReport:
    """Measure ``codecs`` on ``images``; ``settings`` may override a codec's sweep (tests use it).

    ``published``: add the published Kodak curves (None: only when the images are
    the Kodak set, where comparing with them means something). ``progress(n)`` is
    called after each finished (codec, image) task. Raises ValueError when the
    reference is neither measured nor published.
    """
    paths = [str(p) for p in collect_images(images)]
    extra = published_curves() if (is_kodak(paths) if published is None else published) else []
    specs, skipped = {}, {}
    for name in codecs:
        try:
            specs[name] = make_codec(name, model)
        except CodecUnavailable as e:
            skipped[name] = str(e)
    if reference not in specs and reference not in {c.name for c in extra}:
        why = f" ({skipped[reference]})" if reference in skipped else ""
        raise ValueError(f"reference codec {reference!r} is not among the measured or published curves{why}")
    tasks = []
    for name, spec in specs.items():
        sweep = tuple(settings[name]) if settings and name in settings else spec.sweep
        tasks += [(name, model, p, sweep) for p in paths]
    results: list[Measurement] = []
    if jobs <= 1:
        _worker_init(1)  # one thread, like the classical codecs, so CPU times compare
        _CODECS.update({(n, model): s for n, s in specs.items()})
        for t in tasks:
            results += _measure(t)
            if progress:
                progress(1)
    else:
        import multiprocessing as mp

        with ProcessPoolExecutor(jobs, mp_context=mp.get_context("spawn"), initializer=_worker_init,
                                 initargs=(1,)) as pool:
            for batch in pool.map(_measure, tasks):
                results += batch
                if progress:
                    progress(1)
    curves = []
    for name, spec in specs.items():
        sweep = tuple(settings[name]) if settings and name in settings else spec.sweep
        order = [f"{k}={v}" for k, v in sweep]
        curves.append(Curve(name, spec.library, spec.settings, _aggregate([m for m in results if m.codec == name], order)))
    env = environment()
    env["threads_per_process"] = 1
    env["jobs"] = jobs
    return BenchReport(curves + extra, results, reference, paths, skipped, env, " ".join(sys.argv))


# ----- output -------------------------------------------------------------------------------
def _fmt(v, spec=".2f"):
    return "–" if v is None or (isinstance(v, float) and not np.isfinite(v)) else format(v, spec)


def format_table(report: BenchReport) -> str:
    lines = []
    for c in report.curves:
        if c.published:
            continue
        lines.append(f"{c.name}  [{c.library}; {c.settings}]")
        lines.append(f"  {'setting':<14}{'bpp':>8}{'PSNR':>8}{'MS-SSIM':>9}{'(dB)':>7}{'enc ms':>9}{'dec ms':>9}")
        for p in c.points:
            lines.append(f"  {p.setting:<14}{p.bpp:>8.4f}{p.psnr:>8.2f}{p.ms_ssim:>9.4f}{p.ms_ssim_db:>7.2f}"
                         f"{1e3 * p.encode_cpu_s:>9.1f}{1e3 * p.decode_cpu_s:>9.1f}")
    lines.append("")
    lines.append(_summary_table(report, markdown=False))
    for name, why in report.skipped.items():
        lines.append(f"skipped {name}: {why}")
    return "\n".join(lines)


def _summary_table(report: BenchReport, markdown: bool) -> str:
    head = ["codec", f"BD-rate PSNR vs {report.reference}", "BD-rate MS-SSIM", *[f"PSNR@{r}" for r in RATES]]
    rows = []
    for row in report.summary():
        name = row["codec"] + (" (published)" if row["published"] else "")
        rows.append([name, _fmt(row.get("bd_rate_psnr"), "+.1f") + ("%" if row.get("bd_rate_psnr") is not None else ""),
                     _fmt(row.get("bd_rate_ms_ssim_db"), "+.1f") + ("%" if row.get("bd_rate_ms_ssim_db") is not None else ""),
                     *[_fmt(row[f"psnr_at_{r}"]) for r in RATES]])
    if markdown:
        out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        out += ["| " + " | ".join(r) + " |" for r in rows]
        return "\n".join(out)
    widths = [max(len(str(x)) for x in col) for col in zip(head, *rows)]
    return "\n".join("  ".join(str(x).rjust(w) if i else str(x).ljust(w) for i, (x, w) in enumerate(zip(r, widths)))
                     for r in [head, *rows])


def _finite(v):
    """JSON has no NaN or infinity: write them as null."""
    if isinstance(v, float) and not np.isfinite(v):
        return None
    if isinstance(v, dict):
        return {k: _finite(x) for k, x in v.items()}
    if isinstance(v, list):
        return [_finite(x) for x in v]
    return v


def save_json(report: BenchReport, path) -> None:
    blob = {"command": report.command, "environment": report.environment, "reference": report.reference,
            "images": report.images, "skipped": report.skipped, "summary": report.summary(),
            "curves": [asdict(c) for c in report.curves], "measurements": [asdict(m) for m in report.measurements]}
    Path(path).write_text(json.dumps(_finite(blob), indent=1, allow_nan=False) + "\n")


def save_markdown(report: BenchReport, path, plot: str | None = None) -> None:
    env = report.environment
    lines = [f"# Rate–distortion benchmark ({len(report.images)} images)", "",
             f"Command: `{report.command}`", "",
             f"Machine: {env.get('cpu', '?')}, {env.get('cpus')} CPUs; {env.get('platform')}; {env.get('date')}", "",
             "Versions: " + ", ".join(f"{k} {env[k]}" for k in ("python", "torch", "constriction", "pillow", "imagecodecs", "numpy") if k in env), "",
             "Rate is 8·(file bytes)/pixels; PSNR (RGB) and MS-SSIM are means of per-image values. "
             "BD-rate: piecewise-cubic in log-rate over the overlapping range; negative is fewer bits. "
             "Published curves are CompressAI's results files, not measured here.", ""]
    if plot:
        lines += [f"![RD curves]({Path(plot).name})", ""]
    lines += [_summary_table(report, markdown=True), ""]
    for c in report.curves:
        if c.published:
            continue
        lines += [f"## {c.name}", "", f"{c.library}; {c.settings}", "",
                  "| setting | bpp | PSNR | MS-SSIM | MS-SSIM dB | enc ms (CPU) | dec ms (CPU) | model estimate bpp |",
                  "|---|---|---|---|---|---|---|---|"]
        for p in c.points:
            lines.append(f"| {p.setting} | {p.bpp:.4f} | {p.psnr:.2f} | {p.ms_ssim:.4f} | {p.ms_ssim_db:.2f} | "
                         f"{1e3 * p.encode_cpu_s:.1f} | {1e3 * p.decode_cpu_s:.1f} | {_fmt(p.information_bpp, '.4f')} |")
        lines.append("")
    for c in report.curves:
        if c.published:
            lines.append(f"- {c.name}: {c.source}")
    for name, why in report.skipped.items():
        lines.append(f"- skipped {name}: {why}")
    Path(path).write_text("\n".join(lines) + "\n")


def save_plot(report: BenchReport, path) -> None:
    """PSNR–bpp and MS-SSIM(dB)–bpp for every curve (matplotlib, the [bench] extra)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(13, 5.2))
    for c in report.curves:
        style = dict(linestyle="--", linewidth=1, alpha=0.7) if c.published else dict(marker=".", linewidth=1.8)
        label = c.name + (" (published)" if c.published else "")
        if c.name == "vaecodec":
            style.update(color="black", linewidth=2.5)
        axes[0].plot(c.rates(), c.psnrs(), label=label, **style)
        axes[1].plot(c.rates(), c.ms_ssim_dbs(), label=label, **style)
    for ax, ylabel in zip(axes, ("PSNR (RGB) [dB]", "MS-SSIM [dB]")):
        ax.set_xlabel("bits per pixel (file bytes)")
        ax.set_ylabel(ylabel)
        ax.set_xlim(0, 2.0)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle(f"{len(report.images)} images; published curves dashed")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
