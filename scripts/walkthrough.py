"""One held-out spectrogram through a trained latent-diffusion pipeline, stage by stage, drawn as one picture
(docs/walkthrough.md explains every stage and links to the code that does it).

    python scripts/walkthrough.py                       # make demo's pipeline and data -> docs/walkthrough.png
    python scripts/walkthrough.py --pipeline runs/ldm/pipeline --data DIR --user 3 --t 500 --out walk.png

The stages, for one image x (1, C, H, W) in [-1, 1] of user u, a timestep t and guidance scale w:

    z       = scale_latents(E(x).mean) = (mean - shift) * scaling_factor   (LDM paper, section 4.3.2)
    eps     ~ N(0, I), drawn from --seed
    z_t     = sqrt(abar_t) z + sqrt(1 - abar_t) eps                          scheduler.add_noise
    eps_hat = eps(z_t, t, null) + w (eps(z_t, t, u) - eps(z_t, t, null))     the guided UNet (one batch of 2)
    x0_hat  = (z_t - sqrt(1 - abar_t) eps_hat) / sqrt(abar_t)                 the clean latent the prediction implies
    z_t'    = sqrt(abar_t') x0_hat + sqrt(1 - abar_t') eps_hat                one DDIM step (eta = 0), t' = t - N/steps
    D(x0_hat) = decode(unscale_latents(x0_hat))                              back to pixels

x is a TEST file of the run's split.json (PIPELINE/../split.json unless --split says otherwise), so the picture shows
what the models do on a spectrogram neither of them trained on. It is resized to the pipeline's image size (the UNet's
latent size times the autoencoder's factor f) and read with the LDM run's data options when its config.json is there.
"""
from __future__ import annotations

import math
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from ldm import cli, files, io, runs
from ldm.data import SpectrogramFolder
from ldm.jet import jet
from ldm.splits import check_split, read_split
from ldm.pipeline import Pipeline, make_sampler
from ldm.cli import option
from ldm.vae import AutoencoderKL, DiagonalGaussian

LATENT_RANGE = 3.0       # latents are drawn from -3 (blue) through 0 (white) to +3 (red): +-3 std of N(0, I)
IMAGE_SIDE = 128         # pixel images are enlarged (nearest neighbour, integer factor) to at least this side ...
LATENT_SIDE = 64         # ... and each latent channel to at least this one
FONT = ImageFont.load_default(size=12)
GREY = (70, 70, 70)
# the LDM run's data options (config.json keys of train_ldm.py) -> SpectrogramFolder's keywords
READ_OPTIONS = {"resize": "resize", "npy_scale": "npy_scale", "dynamic_range": "dynamic_range_db",
                "db_reference": "db_reference", "colormap": "colormap"}


@dataclass
class WalkthroughConfig:
    pipeline: str = option("runs/demo/ldm/pipeline", "pipeline folder written by train_ldm.py (make demo's by "
                                                     "default)")
    data: str = option("runs/demo/data", "the data folder the pipeline's split was made for")
    split: str | None = option(None, "split.json whose test files to draw from (default: the one beside --pipeline, "
                                     "which train_ldm.py copies from the VAE run)")
    user: str = option("0", "the user: a name from the ID map or an ID number")
    file: int = option(0, "which of the user's test files, in name order", at_least=0)
    t: int = option(500, "the timestep z is noised to, in [0, num_train_timesteps - 1]", at_least=0)
    steps: int = option(50, "the DDIM schedule the one step belongs to: it goes from t to t - N / steps", at_least=1)
    guidance: float = option(3.0, "classifier-free guidance scale w (1 = the conditional prediction alone)",
                             at_least=0)
    seed: int = option(0, "seeds the noise eps", at_least=0)
    device: str = option("cpu", "cpu, cuda, cuda:N, mps, or auto")
    levels: str = option("100,300,500,700,900", "timesteps of the second picture, OUT_levels.png (the same z and eps "
                                                "at each), or 'none'")
    out: str = option("docs/walkthrough.png", "the picture (PNG)")


# ----------------------------------------------------------------------------------------------------------------
# The input: one test spectrogram of one user
# ----------------------------------------------------------------------------------------------------------------


def image_size(pipe: Pipeline) -> tuple[int, int]:
    """(H, W) of the pipeline's images: the UNet's latent size times the autoencoder's downsampling factor f."""
    _, h, w = pipe.latent_shape
    f = pipe.vae.config.downsample_factor
    return h * f, w * f


def read_options(pipeline: Path) -> dict:
    """SpectrogramFolder keywords for reading data as the LDM run did: from PIPELINE/../config.json when there (the
    run's resolved options), else the defaults (make demo's)."""
    config_path = pipeline.parent / io.CONFIG_NAME
    if not config_path.is_file():
        return {}
    config = files.read_json(config_path)
    options = {ours: config[theirs] for theirs, ours in READ_OPTIONS.items() if theirs in config}
    if options.get("colormap") == "none":
        options["colormap"] = None
    if "db_reference" in options:
        options["db_reference"] = cli.db_reference(str(options["db_reference"]))
    return options


def held_out_file(cfg: WalkthroughConfig, pipe: Pipeline) -> tuple[torch.Tensor, int, str]:
    """The --file-th test file of --user: x (1, C, H, W) in [-1, 1] at the pipeline's size, the user's ID, its name."""
    pipeline, data = Path(cfg.pipeline), Path(cfg.data)
    if not data.is_dir():
        raise FileNotFoundError(f"--data {data}: no such folder (the data the pipeline was trained on)")
    split = read_split(cfg.split or pipeline.parent / "split.json")
    check_split(split, data)
    if split["class_to_idx"] != pipe.embedder.class_to_idx:
        raise ValueError(f"the split's users {sorted(split['class_to_idx'])} are not the pipeline's "
                         f"{sorted(pipe.embedder.class_to_idx)}")
    try:
        users = pipe.user_ids(cfg.user)
    except ValueError as error:
        raise ValueError(f"--user: {error}") from None
    if len(users) != 1:
        raise ValueError(f"--user {cfg.user}: name one user, got {len(users)}")
    user = users[0]
    name = pipe.users[user]
    files = sorted(f for f in split["test"] if f.split("/")[0] == name)
    if cfg.file >= len(files):
        raise ValueError(f"--file {cfg.file}: user {name} has {len(files)} test file(s) in the split")
    folder = SpectrogramFolder(data, size=image_size(pipe), channels=pipe.vae.config.in_channels,
                               subset=[files[cfg.file]], class_to_idx=split["class_to_idx"],
                               **read_options(pipeline))
    x, _ = folder[0]                                                    # (C, H, W)
    return x[None], user, files[cfg.file]


# ----------------------------------------------------------------------------------------------------------------
# The stages
# ----------------------------------------------------------------------------------------------------------------


def noise_and_clean(output: torch.Tensor, z_t: torch.Tensor, alpha_bar: torch.Tensor, kind: str):
    """The noise eps_hat and the clean latent x0_hat that a model output implies at z_t = sqrt(abar) x0 + sqrt(1-abar)
    eps, for the scheduler's prediction type: epsilon (output = eps_hat), v_prediction (output = sqrt(abar) eps -
    sqrt(1 - abar) x0, Salimans & Ho 2022) or sample (output = x0_hat). All (B, Cz, h, w); alpha_bar: 0-d."""
    a, s = alpha_bar.sqrt(), (1 - alpha_bar).sqrt()
    if kind == "epsilon":
        return output, (z_t - s * output) / a
    if kind == "v_prediction":
        return a * output + s * z_t, a * z_t - s * output
    return (z_t - a * output) / s, output


@torch.no_grad()
def walk(pipe: Pipeline, x: torch.Tensor, user: int, t: int, steps: int, guidance: float,
         generator: torch.Generator) -> dict[str, torch.Tensor]:
    """Every stage of x (1, C, H, W) in [-1, 1], in the order they happen: {name: tensor}, see the module docstring.
    Latents are (1, Cz, h, w); "D(z)" is the autoencoder's reconstruction, for comparison with "D(x0_hat)"."""
    vae, scheduler = pipe.vae, pipe.scheduler
    encoded = vae.encode(x)                                             # KL: a DiagonalGaussian; VQ: latents
    z = vae.scale_latents(encoded.mean if isinstance(encoded, DiagonalGaussian) else encoded)   # (1, Cz, h, w)
    eps = torch.randn(z.shape, generator=generator).to(z.device)
    timestep = torch.tensor([t], device=z.device)
    z_t = scheduler.add_noise(z, eps, timestep)                         # sqrt(abar_t) z + sqrt(1 - abar_t) eps

    ids = torch.tensor([pipe.embedder.null_id, user], device=z.device)  # [uncond; cond], as guided_sampling batches
    out_uncond, out_cond = pipe.denoiser(torch.cat([z_t, z_t]), timestep.expand(2), ids).chunk(2)
    output = out_uncond + guidance * (out_cond - out_uncond)            # (1, Cz, h, w)
    alpha_bar = scheduler.alphas_cumprod[t].to(z.device)
    eps_hat, x0_hat = noise_and_clean(output, z_t, alpha_bar, scheduler.config.prediction_type)

    ddim = make_sampler("ddim", scheduler)                              # generate()'s DDIM on the same schedule
    ddim.set_timesteps(steps)
    z_prev = ddim.step(output, t, z_t, eta=0.0)

    def decode(latents):
        return vae.decode(vae.unscale_latents(latents)).clamp(-1, 1)   # (1, C, H, W)

    return {"x": x, "z": z, "D(z)": decode(z), "eps": eps, "z_t": z_t, "eps_hat": eps_hat, "x0_hat": x0_hat,
            "z_prev": z_prev, "D(x0_hat)": decode(x0_hat)}


def relative_error(estimate: torch.Tensor, truth: torch.Tensor) -> float:
    """||estimate - truth||_2 / ||truth||_2."""
    return float((estimate - truth).norm() / truth.norm())


def describe(stages: dict[str, torch.Tensor], pipe: Pipeline, t: int, steps: int, guidance: float,
             file: str) -> list[tuple[str, str, str]]:
    """(stage, shape, what it is) for each stage: the rows of the printed table and the picture's labels."""
    scheduler = pipe.scheduler
    prev_t = t - scheduler.config.num_train_timesteps // steps
    target = f"t' = {prev_t}" if prev_t >= 0 else "the end (abar_0, set_alpha_to_one=False)"
    alpha_bar = float(scheduler.alphas_cumprod[t])
    e_eps = relative_error(stages["eps_hat"], stages["eps"])
    e_x0 = relative_error(stages["x0_hat"], stages["z"])
    scale = pipe.vae.config.scaling_factor
    mean = ".mean" if isinstance(pipe.vae, AutoencoderKL) else ""        # a VQModel's E(x) is its latent itself
    notes = {
        "x": f"test file {file}",
        "z": f"scale_latents(E(x){mean}), scaling_factor {scale:.4g}",
        "D(z)": "decode(unscale_latents(z)): the autoencoder's reconstruction",
        "eps": "eps ~ N(0, I), the noise added",
        "z_t": f"add_noise(z, eps, t = {t}), abar_t = {alpha_bar:.4f}",
        "eps_hat": f"guided UNet, w = {guidance:g}; |eps_hat - eps| / |eps| = {e_eps:.3f}",
        "x0_hat": f"(z_t - sqrt(1 - abar_t) eps_hat) / sqrt(abar_t); |x0_hat - z| / |z| = {e_x0:.3f}",
        "z_prev": f"one DDIM step (eta = 0): t = {t} -> {target}",
        "D(x0_hat)": "decode(unscale_latents(x0_hat))",
    }
    return [(name, str(tuple(tensor.shape)), notes[name]) for name, tensor in stages.items()]


def format_table(rows: list[tuple[str, str, str]]) -> str:
    """The rows as an aligned text table with a header."""
    rows = [("stage", "shape", "what")] + rows
    widths = [max(len(row[i]) for row in rows) for i in range(2)]
    lines = [f"{a:<{widths[0]}}  {b:<{widths[1]}}  {c}" for a, b, c in rows]
    lines.insert(1, "-" * max(len(line) for line in lines))
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------------------------
# The picture (PIL only)
# ----------------------------------------------------------------------------------------------------------------


def enlarge(rgb: np.ndarray, side: int) -> np.ndarray:
    """(h, w, 3) uint8 -> the same, each pixel repeated k times both ways, k the smallest integer with k*max(h, w) >=
    side (nearest neighbour: every latent pixel stays visible as one square)."""
    k = max(1, math.ceil(side / max(rgb.shape[:2])))
    return rgb.repeat(k, axis=0).repeat(k, axis=1)


def image_rgb(x: torch.Tensor) -> np.ndarray:
    """(1, C, H, W) in [-1, 1] -> (H', W', 3) uint8: jet colours of the channel mean, enlarged to IMAGE_SIDE (rows:
    Doppler velocity, approaching on top; columns: time)."""
    levels = (x[0].float().mean(0).clamp(-1, 1) + 1) / 2                  # (H, W) in [0, 1]
    return enlarge((jet(levels.cpu().numpy()) * 255).round().astype(np.uint8), IMAGE_SIDE)


def latent_rgb(z: torch.Tensor, pad: int = 2) -> np.ndarray:
    """(1, Cz, h, w) -> (rows * h', cols * w', 3) uint8: each channel a tile (blue -LATENT_RANGE, white 0, red
    +LATENT_RANGE), enlarged to LATENT_SIDE, in a grid of ceil(sqrt(Cz)) columns with white gaps."""
    v = (z[0].float() / LATENT_RANGE).clamp(-1, 1).cpu().numpy()       # (Cz, h, w)
    rgb = np.stack([1 - np.clip(-v, 0, 1), 1 - np.abs(v), 1 - np.clip(v, 0, 1)], axis=-1)   # (Cz, h, w, 3)
    tiles = [enlarge((tile * 255).round().astype(np.uint8), LATENT_SIDE) for tile in rgb]
    cols = math.ceil(math.sqrt(len(tiles)))
    rows = math.ceil(len(tiles) / cols)
    th, tw = tiles[0].shape[:2]
    grid = np.full((rows * (th + pad) - pad, cols * (tw + pad) - pad, 3), 255, dtype=np.uint8)
    for i, tile in enumerate(tiles):
        top, left = (i // cols) * (th + pad), (i % cols) * (tw + pad)
        grid[top:top + th, left:left + tw] = tile
    return grid


def wrap(text: str, width: int) -> list[str]:
    """Break text at spaces into lines at most `width` pixels wide in FONT (a longer word stays whole)."""
    lines, line = [], ""
    for word in text.split(" "):
        candidate = f"{line} {word}".strip()
        if line and FONT.getlength(candidate) > width:
            lines.append(line)
            line = word
        else:
            line = candidate
    return lines + [line]


def stage_picture(name: str, tensor: torch.Tensor) -> np.ndarray:
    """The picture of one stage: pixel images (x and the decodes) in jet, latents channel by channel."""
    return image_rgb(tensor) if name in ("x", "D(z)", "D(x0_hat)") else latent_rgb(tensor)


def draw_figure(panels: list[tuple[str, str, np.ndarray]], title: str, columns: int, margin: int = 12) -> Image.Image:
    """Panels (heading, note, (h, w, 3) uint8 picture) in reading order, `columns` a row, under a title and above the
    colour legend; each panel shows its heading, its note wrapped to the panel's width, then the picture."""
    cell_w = max(max(p.shape[1] for _, _, p in panels), 220)
    line_h = FONT.size + 4
    labels = [[heading] + wrap(note, cell_w) for heading, note, _ in panels]
    text_h = max(len(lines) for lines in labels) * line_h + 4
    cell_h = text_h + max(p.shape[0] for _, _, p in panels)
    legend = ("pixels: jet colours of [-1, 1] (the dB range; rows = Doppler velocity, approaching on top, columns = "
              f"time); latents: one tile per channel, blue -{LATENT_RANGE:g}, white 0, red +{LATENT_RANGE:g}")
    width = columns * (cell_w + margin) + margin
    title_lines, legend_lines = wrap(title, width - 2 * margin), wrap(legend, width - 2 * margin)
    top = margin + len(title_lines) * line_h + margin
    bottom = top + math.ceil(len(panels) / columns) * (cell_h + margin)
    canvas = Image.new("RGB", (width, bottom + len(legend_lines) * line_h + margin), "white")
    draw = ImageDraw.Draw(canvas)
    for i, line in enumerate(title_lines):
        draw.text((margin, margin + i * line_h), line, fill="black", font=FONT)
    for i, ((_, _, picture), lines) in enumerate(zip(panels, labels)):
        left, y = margin + (i % columns) * (cell_w + margin), top + (i // columns) * (cell_h + margin)
        for j, line in enumerate(lines):
            draw.text((left, y + j * line_h), line, fill="black" if j == 0 else GREY, font=FONT)
        canvas.paste(Image.fromarray(picture), (left, y + text_h))
    for i, line in enumerate(legend_lines):
        draw.text((margin, bottom + i * line_h), line, fill=GREY, font=FONT)
    return canvas


def levels_figure(pipe: Pipeline, x: torch.Tensor, user: int, cfg: WalkthroughConfig, levels: list[int]
                  ) -> Image.Image:
    """The same z and eps noised to each of `levels`: z_t in the top row, D(x0_hat) of one guided UNet call under
    it, with abar_t and both relative errors: how much of the spectrogram one prediction recovers at each noise
    level."""
    top, bottom = [], []
    for t in levels:
        stages = walk(pipe, x, user, t, cfg.steps, cfg.guidance, torch.Generator().manual_seed(cfg.seed))
        alpha_bar = float(pipe.scheduler.alphas_cumprod[t])
        top.append((f"z_t, t = {t}", f"abar_t = {alpha_bar:.4f}", latent_rgb(stages["z_t"])))
        bottom.append((f"D(x0_hat), t = {t}", f"|eps_hat - eps| / |eps| = "
                       f"{relative_error(stages['eps_hat'], stages['eps']):.3f}, |x0_hat - z| / |z| = "
                       f"{relative_error(stages['x0_hat'], stages['z']):.3f}", image_rgb(stages["D(x0_hat)"])))
    title = (f"The same latent z and noise eps at {len(levels)} noise levels: z_t (top) and the decoded clean estimate "
             f"x0_hat of one guided UNet call (bottom, guidance {cfg.guidance:g}); user {pipe.users[user]}")
    return draw_figure(top + bottom, title, columns=len(levels))


# ----------------------------------------------------------------------------------------------------------------
# Main
# ----------------------------------------------------------------------------------------------------------------


def parse_levels(text: str) -> list[int]:
    """--levels: 'none' or a comma list of integer timesteps."""
    if text.strip() == "none":
        return []
    try:
        return [int(item) for item in text.split(",")]
    except ValueError:
        raise ValueError(f"--levels {text!r}: expected 'none' or integer timesteps like 100,300,500") from None


def check_timesteps(pipe: Pipeline, cfg: WalkthroughConfig, levels: list[int]) -> None:
    """--t and every --levels timestep lie on the pipeline's schedule, 0 .. N - 1."""
    n = pipe.scheduler.config.num_train_timesteps
    for flag, values in (("--t", [cfg.t]), ("--levels", levels)):
        outside = [t for t in values if not 0 <= t < n]
        if outside:
            raise ValueError(f"{flag} {outside[0]}: the pipeline's schedule has timesteps 0 .. {n - 1}")


def levels_path(out: str) -> Path:
    """Where the second picture goes: OUT with '_levels' before the suffix (docs/walkthrough_levels.png)."""
    path = Path(out)
    return path.with_name(f"{path.stem}_levels{path.suffix or '.png'}")


def run(cfg: WalkthroughConfig) -> int:
    pipeline = Path(cfg.pipeline)
    if not (pipeline / io.PIPELINE_INDEX_NAME).is_file():
        raise FileNotFoundError(f"--pipeline {pipeline}: no pipeline folder there (run make demo first, or pass the "
                                "OUT/pipeline folder of a train_ldm.py run)")
    cli.check_writable(Path(cfg.out).parent, "--out")
    levels = parse_levels(cfg.levels)
    device = runs.resolve_device(cfg.device)
    pipe = Pipeline.from_pretrained(pipeline, device=device)
    check_timesteps(pipe, cfg, levels)
    x, user, file = held_out_file(cfg, pipe)
    stages = walk(pipe, x.to(device), user, cfg.t, cfg.steps, cfg.guidance, torch.Generator().manual_seed(cfg.seed))
    rows = describe(stages, pipe, cfg.t, cfg.steps, cfg.guidance, file)
    print(format_table(rows))
    title = (f"One held-out spectrogram of user {pipe.users[user]} through {pipeline}: encode, noise to t = {cfg.t}, "
             f"predict the noise (guidance {cfg.guidance:g}), take one DDIM step, decode")
    panels = [(f"{name}  {shape}", note, stage_picture(name, stages[name])) for name, shape, note in rows]
    figures = {Path(cfg.out): draw_figure(panels, title, columns=3)}
    if levels:
        figures[levels_path(cfg.out)] = levels_figure(pipe, x.to(device), user, cfg, levels)
    for path, figure in figures.items():
        files.atomic_write(path, lambda tmp: figure.save(tmp, format="PNG"))
        print(f"wrote {path} ({figure.width}x{figure.height})")
    return 0


def main(argv: list[str] | None = None) -> int:
    cfg = cli.parse_config(WalkthroughConfig, argv, __doc__.split("\n\n")[0])
    return cli.run_main(run, cfg)


if __name__ == "__main__":
    sys.exit(main())
